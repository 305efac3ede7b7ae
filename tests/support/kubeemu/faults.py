"""Injected request failures."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ApiError


@dataclass
class FaultRule:
    verb: str  # get, list, watch, create, update, patch, delete, deletecollection, or "*"
    resource: str  # plural, "plural/subresource" or "*"
    remaining: int
    code: int
    reason: str | None
    message: str | None

    def matches(self, verb: str, resource: str) -> bool:
        return self.remaining > 0 and self.verb in ("*", verb) and self.resource in ("*", resource)


class Faults:
    def __init__(self) -> None:
        self.rules: list[FaultRule] = []
        self.hits: list[tuple[str, str, int]] = []

    def add(self, rule: FaultRule) -> None:
        self.rules.append(rule)

    def clear(self) -> None:
        self.rules.clear()

    def check(self, verb: str, resource: str) -> None:
        for rule in self.rules:
            if rule.matches(verb, resource):
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self.rules.remove(rule)
                self.hits.append((verb, resource, rule.code))
                msg = rule.message or f"injected fault for {verb} {resource}"
                raise ApiError(rule.code, msg, rule.reason)
