"""Clinic lanes in the JetStream topology: where a job is published, which job subject a lane
belongs to, and what its consumer is called (medmesh.jetstream, used by medmesh.lanes)."""

from __future__ import annotations

import pytest

from medmesh.jetstream import Topology, lane_token

T = Topology(subject_root="mm", stream_prefix="MM")
HASHED = lane_token("clinic.with dots*")


@pytest.mark.parametrize(
    ("job_subject", "clinic", "expected"),
    [
        ("mm.jobs.infer.image", "clinic-a", "mm.jobs.infer.image.clinic-a"),
        ("mm.jobs.infer.text", "clinic-b", "mm.jobs.infer.text.clinic-b"),
        ("mm.jobs.infer.image", "clinic.with dots*", f"mm.jobs.infer.image.{HASHED}"),
        ("mm.jobs.infer.image", "", "mm.jobs.infer.image"),  # no clinic: the job subject
        ("mm.jobs.report", "clinic-a", "mm.jobs.report.clinic-a"),
        ("mm.jobs.deliver", "clinic-a", "mm.jobs.deliver.clinic-a"),
        ("mm.events.study.results_ready", "clinic-a", "mm.events.study.results_ready"),
    ],
)
def test_a_job_is_published_on_its_clinics_lane_when_its_subject_has_lanes(
    job_subject: str, clinic: str, expected: str
) -> None:
    assert T.publish_subject(job_subject, clinic) == expected


@pytest.mark.parametrize(
    ("subject", "job_subject", "lane"),
    [
        ("mm.jobs.infer.image.clinic-a", "mm.jobs.infer.image", "clinic-a"),
        (f"mm.jobs.infer.text.{HASHED}", "mm.jobs.infer.text", HASHED),
        ("mm.jobs.infer.image", "mm.jobs.infer.image", ""),
        ("mm.jobs.report.clinic-a", "mm.jobs.report", "clinic-a"),
        ("mm.events.study.uploaded", "mm.events.study.uploaded", ""),  # events have no lanes
        ("mm.jobs.infer.image._x", "mm.jobs.infer.image._x", ""),  # not a lane token
    ],
)
def test_a_lane_subject_names_its_job_subject_and_its_lane(
    subject: str, job_subject: str, lane: str
) -> None:
    assert T.job_subject_of(subject) == job_subject
    assert T.lane_of(subject) == lane


def test_a_clinic_id_that_is_no_subject_token_gets_a_hashed_token_no_plain_id_can_equal() -> None:
    assert lane_token("clinic-a") == "clinic-a"
    assert HASHED.startswith("_h")
    assert len(HASHED) == 34
    assert lane_token("clinic.with dots*") == HASHED
    assert lane_token("clinic.other") != HASHED


def test_a_lanes_consumer_is_the_job_consumer_with_its_own_name_filter_and_idle_limit() -> None:
    spec = T.lane_consumer(T.infer_image_consumer, "clinic-a")

    assert spec.durable == "infer-image_lane_clinic-a"
    assert spec.filter_subject == "mm.jobs.infer.image.clinic-a"
    assert spec.stream == T.jobs_stream
    assert (spec.max_attempts, spec.ack_wait_s) == (4, 30.0)
    assert spec.inactive_threshold_s == T.max_age_s + 3600.0
    assert spec.config().inactive_threshold == T.max_age_s + 3600.0
    assert T.infer_image_consumer.config().inactive_threshold is None
    assert all("_" not in base.durable for base in T.consumer_specs())


def test_only_laned_subjects_have_lanes() -> None:
    with pytest.raises(ValueError, match="has no clinic lanes"):
        T.lane_subject(T.study_event_subject("results_ready"), "clinic-a")
