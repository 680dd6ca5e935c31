"""talkbox: a headless smart-speaker daemon for the Raspberry Pi."""

__version__ = "0.1.0"
