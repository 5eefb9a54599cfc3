"""The operator's side of over-the-air rollouts: ``fleet`` (what the fleet reports, signed
documents and bundle chunks over MQTT), ``history`` (every decision, on disk), ``health``
(the rules and their verdicts), ``deploy`` (the canary watch, promote and abort) and
``bundle_server`` (HTTP with Range). The document itself is the kernel's
(``edgekit.core.deployment``), which the device's agent reads too."""
