"""The Session Management Guide's helper classes, backed by nexusd.

The guide's analytics and best-practice snippets build `SessionAnalytics(app)`
and `SessionBestPractices()` around its `app`; with these, its snippets run
against nexusd with only the imports changed::

    from nexus_client import Nexus
    from nexus_client.guide import SessionAnalytics, SessionBestPractices

Where the guide's toy kept figures in the object (lost with the process), the
daemon keeps them: per session in the session's journal, daemon-wide as
changes commit (see the README, "Analytics and insights").
"""

from __future__ import annotations

from typing import Any

from ._backoff import RETRYABLE, Backoff
from ._blocking import Nexus

__all__ = ["SessionAnalytics", "SessionBestPractices"]


class SessionAnalytics:
    """The guide's `SessionAnalytics`: each method asks the daemon through `app`."""

    def __init__(self, nexus_app: Nexus) -> None:
        self.app = nexus_app

    def track_session_event(self, session_id: str, event_type: str, event_data: Any) -> int:
        """Journals the event in the session; returns its seq."""
        return self.app.track_session_event(session_id, event_type, event_data)

    def get_session_summary(self, session_id: str) -> dict[str, Any]:
        return self.app.get_session_summary(session_id)

    def get_channel_analytics(self) -> dict[str, Any]:
        """Admin: across every session the daemon has seen."""
        return self.app.get_channel_analytics()

    def get_performance_analytics(self) -> dict[str, Any]:
        """Admin: workflow runs across every session."""
        return self.app.get_performance_analytics()

    def get_transition_analytics(self, session_id: str | None = None) -> dict[str, Any]:
        return self.app.get_transition_analytics(session_id)

    def generate_insights(self, session_id: str | None = None) -> list[str]:
        return self.app.generate_insights(session_id)


class SessionBestPractices:
    """The guide's `SessionBestPractices`, as library behaviour."""

    @staticmethod
    def create_optimal_session(nexus_app: Nexus, user_context: dict[str, Any]) -> str:
        """A session on the guide's optimal starting channel (`Nexus.create_optimal_session`)."""
        return nexus_app.create_optimal_session(user_context)

    @staticmethod
    def optimize_session_performance(session_id: str, nexus_app: Nexus) -> dict[str, Any]:
        """What the daemon's insights suggest for the session. Nothing is
        applied and no improvement is claimed: the guide's fixed list and
        "15-25%" were not measured."""
        return {"session_id": session_id, "optimizations_applied": [],
                "recommendations": nexus_app.generate_insights(session_id),
                "performance_improvement": None}

    @staticmethod
    def handle_session_errors(session_id: str, error_context: dict[str, Any]) -> dict[str, Any]:
        """The guide's plan for an error, naming the call that carries it out:
        `Nexus.continue_session` for an expired session, the endpoints given
        to `Nexus` for an unavailable channel, `retry` with `Backoff` else."""
        error_type = error_context.get("error_type")
        if error_type == "session_expired":
            return {"action": "create_new_session", "preserve_context": True,
                    "call": "Nexus.continue_session(session_id, keys)",
                    "message": "Session expired. Creating new session with preserved context."}
        if error_type == "channel_unavailable":
            return {"action": "fallback_channel", "fallback": "api",
                    "call": "Nexus([endpoint, fallback, ...])",
                    "message": "Channel unavailable. Switching to API fallback."}
        policy = Backoff(max_attempts=3)
        return {"action": "retry_with_backoff", "retry_count": policy.max_attempts,
                "retry_on": [cls.__name__ for cls in RETRYABLE],
                "call": "nexus_client.retry(call, Backoff(max_attempts=3))",
                "message": "Temporary error. Retrying with exponential backoff."}
