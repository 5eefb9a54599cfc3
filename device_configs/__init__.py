"""Shipped device profiles, one TOML file each. See docs/profiles.md for the schema."""
