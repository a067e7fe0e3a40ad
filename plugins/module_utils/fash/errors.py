# -*- coding: utf-8 -*-
# Copyright (c) manta.ops contributors
# SPDX-License-Identifier: MPL-2.0
"""Exceptions raised by the fash ring library.

Every error derives from :class:`RingError`, so callers can catch that one
class. Messages always name the offending input (a vnode, a pnode, a key of
the LevelDB store, a path) and, for bad input, what would be valid.
"""
from __future__ import annotations


class RingError(Exception):
    """Base class of every ring error."""


class RingInputError(RingError, ValueError):
    """Bad input from the caller (vnode, pnode, algorithm, JSON topology...).

    Raised before anything is written.
    """


class RingLockedError(RingError):
    """The LevelDB ring is held by another process (electric-moray, fash...).

    ``lock_path`` is ``<ring>/LOCK``.
    """

    def __init__(self, message, lock_path=None):
        super().__init__(message)
        self.lock_path = lock_path


class RingNotFoundError(RingError):
    """There is no ring at the given path."""


class RingExistsError(RingError):
    """A ring (or other files) already exists where a new ring was to be written."""


class RingCorruptError(RingError):
    """The ring on disk is incomplete or inconsistent (missing COMPLETE, /VNODE/N-1...)."""


class RingLookupError(RingError, LookupError):
    """A lookup found nothing, e.g. a key that hashes past the last vnode (fash does not clamp)."""
