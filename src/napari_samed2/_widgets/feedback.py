"""What the panels tell the user: which errors are the user's to fix, and how to say them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from napari_samed2.errors import SamEd2Error

if TYPE_CHECKING:
    from napari_samed2.engine import Session

#: errors a panel reports on its status line (bad input, a refused step); anything else is a bug
USER_ERRORS = (SamEd2Error, ValueError, KeyError, IndexError)


def plain(exc: Exception) -> str:
    """The message of ``exc``: ``str(KeyError("..."))`` keeps quotes the user should not see."""
    return exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)


def summary(session: Session) -> str:
    """"2 objects, prompts on 3 slices, 8 slices segmented"."""
    objects = len(session.object_ids)
    prompted = {f for frames in session.prompts.values() for f in frames}
    segmented = {f for memory in session.memories.values() for f in (*memory.entries, *memory.pending) if f >= 0}
    return (f"{objects} object{'' if objects == 1 else 's'}, prompts on {len(prompted)} "
            f"slice{'' if len(prompted) == 1 else 's'}, {len(segmented)} slice{'' if len(segmented) == 1 else 's'} segmented")
