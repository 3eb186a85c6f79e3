"""Capture reports arrive on the reporting host's own subject, never through the API."""

from __future__ import annotations

from common import codec, subjects
from common.fields import ErrorCode
from common.image_messages import ImageCaptured
from scheduler.core.contract import InvalidJob, Mutation, Op
from scheduler.shell.api import decode_capture_report, decode_mutation

REPORT = ImageCaptured(image="golden", vm="web", host_id="h1", sha256="ab" * 32, size_bytes=10)


def test_a_report_on_its_own_host_subject_is_a_mutation() -> None:
    item = decode_capture_report(subjects.host_captured("h1"), codec.encode(REPORT), token=7)
    assert isinstance(item, Mutation)
    assert (item.op, item.body, item.token) == (Op.IMAGE_CAPTURED, REPORT, 7)


def test_a_report_naming_another_host_than_its_subject_is_refused() -> None:
    item = decode_capture_report(subjects.host_captured("h2"), codec.encode(REPORT), token=7)
    assert isinstance(item, InvalidJob) and item.code is ErrorCode.INVALID_REQUEST
    assert "h1" in item.detail


def test_malformed_and_oversized_reports_are_refused() -> None:
    subject = subjects.host_captured("h1")
    bad = decode_capture_report(subject, b'{"image": 1}', token=1)
    assert isinstance(bad, InvalidJob) and bad.code is ErrorCode.INVALID_REQUEST
    huge = decode_capture_report(subject, b" " * (codec.MAX_MESSAGE_BYTES + 1), token=1)
    assert isinstance(huge, InvalidJob) and huge.code is ErrorCode.TOO_LARGE


def test_the_old_api_subject_is_no_route() -> None:
    item = decode_mutation("stratus.api.image.captured", codec.encode(REPORT), token=1)
    assert isinstance(item, InvalidJob) and item.code is ErrorCode.INVALID_REQUEST
    assert item.detail == "unknown subject"
