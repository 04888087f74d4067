"""``plugins.dashboard``: the dashboard's own YAML section."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DashboardOptions:
    session_hours: float = 12.0  # a sign-in lasts this long
    secure_cookie: str = "auto"  # auto (when served over TLS) | always (behind a TLS proxy) | never
    sign_in_attempts: int = 5  # failed sign-ins allowed per client address per window
    sign_in_window: float = 300.0  # seconds
    poll_seconds: float = 15.0  # how often an open page refreshes (doubling on errors, up to 5 minutes)

    def problems(self) -> list[str]:
        out = []
        if self.secure_cookie not in ("auto", "always", "never"):
            out.append(f"secure_cookie: use auto, always or never, got {self.secure_cookie!r}")
        if not self.session_hours > 0:
            out.append("session_hours: must be more than 0")
        if self.sign_in_attempts < 1:
            out.append("sign_in_attempts: must be at least 1")
        if not self.sign_in_window > 0:
            out.append("sign_in_window: must be more than 0")
        if not self.poll_seconds >= 1:
            out.append("poll_seconds: must be at least 1")
        return out
