"""Reads of inference jobs, scoped to the owner of their conversation."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser

from inference.models import InferenceJob
from llmproject.exceptions import NotFound


def job_get(*, owner: AbstractBaseUser, job_id: int) -> InferenceJob:
    job = (
        InferenceJob.objects.select_related("message__conversation")
        .filter(pk=job_id, message__conversation__owner=owner)
        .first()
    )
    if job is None:
        raise NotFound(f"job {job_id} not found")
    return job


def job_get_for_message(*, owner_id: int, conversation_id: int, message_id: int) -> InferenceJob:
    job = (
        InferenceJob.objects.select_related("message")
        .filter(
            message_id=message_id,
            message__conversation_id=conversation_id,
            message__conversation__owner_id=owner_id,
        )
        .first()
    )
    if job is None:
        raise NotFound(f"message {message_id} has no job in this conversation")
    return job
