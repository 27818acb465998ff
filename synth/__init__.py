"""synth: turn folders of real photos into relighting / shadow-removal training pairs."""

__version__ = "0.1.0"
