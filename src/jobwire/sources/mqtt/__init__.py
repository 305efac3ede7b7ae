"""MQTT (5, and 3.1.1 for old brokers) as an event source: `spec` (trigger and settings, pure
pydantic) and `source` (aiomqtt over paho-mqtt, the `mqtt` pip extra). Seed 004's listener."""
