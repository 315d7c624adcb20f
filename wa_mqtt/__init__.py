"""wa_mqtt: a WhatsApp <-> MQTT bridge (neonize engine, Home Assistant ready)."""

__version__ = "0.1.0"
