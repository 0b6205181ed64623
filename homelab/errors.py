"""The one exception type that means "the user can fix this".

Every stage raises a subclass of :class:`HomelabError` for bad input or a failed precondition.
The CLI and the doit tasks print its message (no traceback) and exit with status 2. Anything
else that escapes is a bug in homelab and keeps its traceback.
"""

from __future__ import annotations


class HomelabError(Exception):
    """A problem the user can fix. The message names the file/key/request and the fix."""

    exit_code = 2
