"""The house's MQTT broker: Home Assistant discovery, and which speaker answers (adapter)."""
