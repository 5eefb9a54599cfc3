"""Local services for tests, examples and benchmarks: a Mosquitto broker (``mosquitto``) and
a PostgreSQL server (``postgres``) on free loopback ports. Production fleets run their own."""
