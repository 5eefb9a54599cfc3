"""The on-device side of edgekit. Imports stay light: never TensorFlow, and backends lazily."""
