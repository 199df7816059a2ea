"""latentz: image VAEs you can train in one command, explore in the browser and use as a codec."""

__version__ = "0.1.0"
