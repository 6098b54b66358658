"""ltxserve: LTX-Video 0.9.7 13B image-to-video on your own GPU, behind fal.ai's queue protocol."""

__version__ = "0.1.0"
