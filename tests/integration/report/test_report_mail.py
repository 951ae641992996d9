"""The "report ready" e-mail: to the clinic's verified, enabled clinicians and admins (the
`auth.report_recipients` read model) and the target's extra addresses, over real SMTP, with
no patient data anywhere in it."""

from __future__ import annotations

import uuid

from report_harness import OTHER_CLINIC, XSS_PATIENT, Mailbox, ReportHarness
from report_mis import MisReceiver

from gen.medmesh.report.v1 import DeliveryTarget, SetDeliveryTargetRequest
from svc_report.notify import SUBJECT


def address(name: str) -> str:
    """A unique address, so the session mailbox needs no reset."""
    return f"{name}-{uuid.uuid4().hex[:8]}@clinic.example"


async def test_report_ready_mail_reaches_clinicians_and_admins_with_no_patient_reference(
    reports: ReportHarness, mailbox: Mailbox, mis: MisReceiver
) -> None:
    clinician, admin, ward = address("clinician"), address("admin"), address("ward")
    unverified, disabled, technician, stranger = (
        address("unverified"),
        address("disabled"),
        address("technician"),
        address("stranger"),
    )
    await reports.seed_user(clinician)
    await reports.seed_user(admin, roles=("admin",))
    await reports.seed_user(unverified, verified=False)
    await reports.seed_user(disabled, disabled=True)
    await reports.seed_user(technician, roles=("technician",))
    await reports.seed_user(stranger, clinic_id=OTHER_CLINIC)
    await reports.report.set_delivery_target(
        SetDeliveryTargetRequest(
            delivery_target=DeliveryTarget(
                name="clinics/clinic-a/deliveryTarget",
                fhir_base_url=mis.base_url,
                enabled=True,
                notify_emails=[ward],
            )
        ),
        metadata=reports.metadata(roles=("admin",)),
    )
    study = await reports.seed_study(patient_ref=f"PAT-SECRET {XSS_PATIENT}")

    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    mails = [await mailbox.wait_for(to) for to in (clinician, admin, ward)]

    for mail in mails:
        assert mail["Subject"] == SUBJECT
        assert "PAT-SECRET" not in mail["Subject"]
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
        for body in (text, html):
            assert "PAT-SECRET" not in body
            assert study.study_id in body
            assert f"https://app.medmesh.test/reports/{row['report_id']}" in body
            assert "AI-assisted result, to be reviewed by a clinician." in body
    for nobody in (unverified, disabled, technician, stranger):
        assert mailbox.to(nobody) == []
    notified = await reports.wait_for_rows(
        "SELECT notify_error FROM report.reports WHERE report_id = %s AND notified_at IS NOT NULL",
        (row["report_id"],),
    )
    assert notified[0]["notify_error"] == ""
