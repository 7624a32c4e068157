class ConvertError(Exception):
    """A one-line reason the conversion cannot go on (exit 2); nothing is written."""


class ConvertRefused(ConvertError):
    """The conversion ran but its result would be wrong (exit 3, `--force` overrides); nothing is written."""
