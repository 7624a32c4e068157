class ConvertError(Exception):
    """A problem the user can fix (missing file, bad data, mismatched labels); printed as one line, exit 2."""
