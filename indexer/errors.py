"""The one error a library reports to its user: a library that cannot be used as asked, with what to do.

It lives apart from the library itself so that `search query` can raise and report it without torch.
"""


class LibraryError(Exception):
    """A library that cannot be used as asked; the message says what to do."""


class NoLibrary(LibraryError):
    """No library at all at the place asked (nothing wrong with anything there): index a folder to make one."""
