"""Search: queries from the command line: nearest neighbours, and export of the matching samples."""
