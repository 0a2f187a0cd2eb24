"""Configuration: typed settings (settings.py) and how they are read (load.py)."""
from .load import ConfigError, load_instrument, load_settings, settings_from_dict
from .settings import InstrumentProfile, Settings

__all__ = ["ConfigError", "InstrumentProfile", "Settings", "load_instrument", "load_settings", "settings_from_dict"]
