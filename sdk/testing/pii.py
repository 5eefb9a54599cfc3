"""A labelled corpus of personal data inside smart-home commands, made with Faker in seven
locales, and the per-type recall and precision of a de-identifier on it.

Every example is a command with its PII spans marked: person names, phone numbers in
national and international formats, e-mail addresses, street addresses, postcodes, dates of
birth, IBANs, card numbers and IP addresses, alone or several in one sentence. Commands with
no personal data at all ("set the bedroom to 21 degrees") count against precision only.

An entity is **caught** when every letter and digit of it lies inside a masked span, so a
street masked but its house number left counts as a leak. A masked span is **right** when
it overlaps some PII span.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date

TYPES = ("NAME", "PHONE", "EMAIL", "ADDRESS", "POSTCODE", "DATE", "IBAN", "CARD", "IP")
STRUCTURED = TYPES[1:]
LOCALES = ("en_US", "en_GB", "de_DE", "fr_FR", "es_ES", "it_IT", "nl_NL")
Span = tuple[int, int, str]

TEMPLATES = {
    "NAME": (
        "call {NAME}", "send a message to {NAME} that dinner is ready", "is {NAME} at home",
        "remind {NAME} to water the plants", "{NAME} will pick up the kids at five",
        "tell {NAME} the door is open", "let {NAME} in when the bell rings", "play the playlist of {NAME}",
    ),
    "PHONE": (
        "call {PHONE}", "dial {PHONE} please", "my number is {PHONE}", "text {PHONE} when the alarm goes off",
    ),
    "EMAIL": (
        "email the shopping list to {EMAIL}", "forward the camera clip to {EMAIL}", "my mail is {EMAIL}",
    ),
    "ADDRESS": (
        "navigate to {ADDRESS}", "order a taxi to {ADDRESS}", "the parcel goes to {ADDRESS}",
        "how long to drive to {ADDRESS}",
    ),
    "POSTCODE": (
        "weather for {POSTCODE}", "are there deliveries to {POSTCODE} today", "set the region to {POSTCODE}",
    ),
    "DATE": ("my birthday is {DATE}", "i was born on {DATE}", "add a reminder for {DATE}"),
    "IBAN": ("transfer 50 euros to {IBAN}", "pay the electricity bill from {IBAN}", "my account is {IBAN}"),
    "CARD": ("pay with card {CARD}", "save the card {CARD} for groceries", "the card number is {CARD}"),
    "IP": ("block {IP} on the router", "the camera is at {IP}", "ping {IP}"),
    "MIXED": (
        "call {NAME} on {PHONE} at {ADDRESS}", "send {NAME} the invoice at {EMAIL}",
        "{NAME} was born on {DATE} and lives at {ADDRESS}", "pay {NAME} from {IBAN}",
    ),
}  # fmt: skip
NEGATIVES = (
    "set the bedroom to 21 degrees", "turn on the kitchen lights", "Timer 5 minutes", "dim the lights to 40%",
    "turn the volume up to 30 percent", "open the blinds at 7:30", "Living Room lights off",
    "start the washing machine in 2 hours", "set the oven to 180 degrees for 45 minutes",
    "what is the weather in Berlin tomorrow", "play track 3 of the album", "lock the front door at 10 pm",
    "Set Kitchen to 19.5", "Zone 3 sprinklers on for 20 minutes", "switch to Channel 5", "Fan speed 2",
    "add 2 litres of milk and 12 eggs to the list", "wake me at 6:45 on weekdays", "Garage Door close",
    "set the thermostat in Room 4 to 22", "play Radio 1", "how far is it to the Main Station",
    "record the match on Sky Sports 2 at 20:00", "the Philips Hue bulb 3 is offline",
    "set an alarm for 7 tomorrow", "dim Bedroom Lamp to 15 percent", "run program 4 on the dishwasher",
    "turn up the heating by 2 degrees", "what is 15 times 24", "play the Top 40 chart",
)  # fmt: skip
_MONTHS = {
    "de": "Januar Februar März April Mai Juni Juli August September Oktober November Dezember",
    "fr": "janvier février mars avril mai juin juillet août septembre octobre novembre décembre",
    "es": "enero febrero marzo abril mayo junio julio agosto septiembre octubre noviembre diciembre",
    "it": "gennaio febbraio marzo aprile maggio giugno luglio agosto settembre ottobre novembre dicembre",
    "nl": "januari februari maart april mei juni juli augustus september oktober november december",
    "en": "January February March April May June July August September October November December",
}


@dataclass(frozen=True)
class Example:
    text: str
    spans: tuple[Span, ...]
    locale: str


def corpus(per_type: int = 100, seed: int = 0, locales: tuple[str, ...] = LOCALES) -> list[Example]:
    """``per_type`` commands for each type and for mixed sentences, and the negatives."""
    from faker import Faker

    fakers = {locale: Faker(locale) for locale in locales}
    for offset, fake in enumerate(fakers.values()):
        fake.seed_instance(seed * 100 + offset)
    rng = random.Random(seed)
    examples = []
    for templates in TEMPLATES.values():
        for i in range(per_type):
            locale = locales[i % len(locales)]
            values = _Values(fakers[locale], locale, rng)
            examples.append(_fill(rng.choice(templates), values, locale))
    examples += [Example(text, (), "en_US") for text in NEGATIVES]
    return examples


def _fill(template: str, values: _Values, locale: str) -> Example:
    text, spans, rest = "", [], template
    while "{" in rest:
        before, _, tail = rest.partition("{")
        kind, _, rest = tail.partition("}")
        text += before
        value = values.make(kind)
        spans.append((len(text), len(text) + len(value), kind))
        text += value
    return Example(text + rest, tuple(spans), locale)


class _Values:
    def __init__(self, fake: object, locale: str, rng: random.Random) -> None:
        self.fake: object = fake
        self.locale = locale
        self.rng = rng

    def make(self, kind: str) -> str:
        maker: Callable[[], str] = getattr(self, kind.lower())
        return maker().replace("\n", ", ")

    def name(self) -> str:
        fake: object = self.fake
        return str(self.rng.choice((fake.name, fake.first_name, fake.name))())  # type: ignore[attr-defined]

    def phone(self) -> str:
        return str(self.fake.phone_number())  # type: ignore[attr-defined]

    def email(self) -> str:
        return str(self.fake.email())  # type: ignore[attr-defined]

    def address(self) -> str:
        return str(self.fake.street_address())  # type: ignore[attr-defined]

    def postcode(self) -> str:
        return str(self.fake.postcode())  # type: ignore[attr-defined]

    def date(self) -> str:
        born: date = self.fake.date_of_birth()  # type: ignore[attr-defined]
        months = _MONTHS.get(self.locale[:2], _MONTHS["en"]).split()
        month = months[born.month - 1]
        return self.rng.choice((
            f"{born:%d.%m.%Y}", f"{born:%Y-%m-%d}", f"{born:%d/%m/%Y}", f"{born.day} {month} {born.year}",
            f"{month} {born.day}, {born.year}", f"{born.day} {month}",
        ))  # fmt: skip

    def iban(self) -> str:
        value = str(self.fake.iban())  # type: ignore[attr-defined]
        spaced = " ".join(value[i : i + 4] for i in range(0, len(value), 4))
        return spaced if self.rng.random() < 0.5 else value

    def card(self) -> str:
        value = str(self.fake.credit_card_number())  # type: ignore[attr-defined]
        separator = self.rng.choice(("", " ", "-"))
        return separator.join(value[i : i + 4] for i in range(0, len(value), 4))

    def ip(self) -> str:
        return str(self.rng.choice((self.fake.ipv4, self.fake.ipv6, self.fake.ipv4_private))())  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Score:
    kind: str
    entities: int
    caught: int
    masked: int
    """Spans masked as this type."""
    right: int
    """Of those, the ones that overlap personal data."""

    @property
    def recall(self) -> float:
        return self.caught / self.entities if self.entities else float("nan")

    @property
    def precision(self) -> float:
        return self.right / self.masked if self.masked else float("nan")


def score(examples: list[Example], spans: Callable[[str], list[Span]]) -> dict[str, Score]:
    """Recall per labelled type and precision per masked type."""
    entities: dict[str, list[bool]] = {}
    masked: dict[str, list[bool]] = {}
    for example in examples:
        found = spans(example.text)
        for start, end, kind in example.spans:
            entities.setdefault(kind, []).append(_covered(example.text, start, end, found))
        for start, end, kind in found:
            hit = any(start < b and a < end for a, b, _ in example.spans)
            masked.setdefault(kind, []).append(hit)
    kinds = [*TYPES, *sorted(set(masked) - set(TYPES))]
    return {
        kind: Score(
            kind, len(entities.get(kind, [])), sum(entities.get(kind, [])),
            len(masked.get(kind, [])), sum(masked.get(kind, [])),
        )
        for kind in kinds
    }  # fmt: skip


def leaks(examples: list[Example], spans: Callable[[str], list[Span]], kind: str) -> Iterator[str]:
    """The entities of ``kind`` that are not caught, for fixing patterns."""
    for example in examples:
        found = spans(example.text)
        for start, end, labelled in example.spans:
            if labelled == kind and not _covered(example.text, start, end, found):
                yield f"{example.locale}: {example.text[start:end]!r} in {example.text!r}"


def _covered(text: str, start: int, end: int, found: list[Span]) -> bool:
    return all(
        any(a <= i < b for a, b, _ in found) for i in range(start, end) if text[i].isalnum()
    )


def table(scores: dict[str, Score]) -> str:
    """The markdown table docs/privacy.md shows."""
    lines = ["| type | entities | recall | masked spans | precision |", "|---|---:|---:|---:|---:|"]
    for s in scores.values():
        recall = f"{s.recall:.3f}" if s.entities else "–"
        precision = f"{s.precision:.3f}" if s.masked else "–"
        lines.append(f"| {s.kind} | {s.entities} | {recall} | {s.masked} | {precision} |")
    return "\n".join(lines)
