"""Which response the assistant is giving: the one piece of response tracking.

The service may send events of responses talkbox no longer listens to (one interrupted by a
barge-in, one started by a race): only the response followed here counts. The conversation
machine and `talkbox ask` both follow responses through this, so they agree on what belongs
to the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

from talkbox.core.events import ResponseCreated, ResponseDone


@dataclass
class FollowedResponse:
    """The response being followed: the first created while none is, until it is done."""

    response_id: str | None = None

    def created(self, event: ResponseCreated) -> bool:
        """Follow this response if none is followed; True when it is now followed."""
        if self.response_id is not None:
            return False  # never two responses at once
        self.response_id = event.response_id
        return True

    def is_followed(self, response_id: str) -> bool:
        return self.response_id is not None and response_id == self.response_id

    def done(self, event: ResponseDone) -> bool:
        """True when the followed response is done (it is then followed no more)."""
        if not self.is_followed(event.response_id):
            return False  # one we stopped caring about, or never saw
        self.response_id = None
        return True

    def drop(self) -> str | None:
        """Stop following the response (barge-in); returns its id, if there was one."""
        response_id, self.response_id = self.response_id, None
        return response_id
