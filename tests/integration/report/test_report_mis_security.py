"""The MIS is a clinic admin's choice, so svc_report guards what it sends there and how long
it waits: no private, loopback, link-local, multicast or metadata destinations unless the
operator allowed the network (checked when the target is set and again, pinned, at every
delivery); answers capped in time and size, one slow MIS never holding up another clinic's
delivery; receipts with status codes, never response bodies; the bearer token encrypted at
rest and dropped when the URL changes (issue 11, items 7 and 8)."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Iterator
from typing import Any

import grpc
import psycopg
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from psycopg.rows import dict_row
from report_harness import CLINIC, OTHER_CLINIC, ReportHarness
from report_mis import MIS_HOST_NAME, REPORT_KEK, MisReceiver, TlsFiles, running_mis

from gen.medmesh.events.v1 import DeadLetterEnvelope
from gen.medmesh.report.v1 import (
    DeliveryStatus,
    DeliveryTarget,
    GetDeliveryTargetRequest,
    SetDeliveryTargetRequest,
)
from medmesh.keyring import SecretBox
from svc_report import delivery_store
from svc_report.config import ReportConfig
from svc_report.egress import Destination, EgressPolicy, RefusedDestination
from svc_report.mis import MisClient, MisEndpoint, MisRejected
from svc_report.model import Receipt

TOKEN = "mis-token-one"

REFUSED_ADDRESSES = [
    ("127.0.0.1", "a loopback address"),
    ("127.3.4.5", "a loopback address"),
    ("::1", "a loopback address"),
    ("10.1.2.3", "a private address"),
    ("172.16.0.9", "a private address"),
    ("192.168.1.10", "a private address"),
    ("fd12:3456::1", "a private address"),
    ("169.254.169.254", "a cloud metadata address"),
    ("fd00:ec2::254", "a cloud metadata address"),
    ("169.254.10.10", "a link-local address"),
    ("fe80::1", "a link-local address"),
    ("224.0.0.251", "a multicast address"),
    ("ff02::1", "a multicast address"),
    ("0.0.0.0", "the unspecified address"),
    ("::", "the unspecified address"),
    ("100.64.1.1", "a carrier-grade NAT address"),
    ("240.0.0.1", "a reserved address"),
    ("255.255.255.255", "a reserved address"),
    ("::ffff:169.254.169.254", "a cloud metadata address (inside ::ffff:a9fe:a9fe)"),
    ("::ffff:10.0.0.1", "a private address (inside ::ffff:a00:1)"),
    ("2002:7f00:1::", "a loopback address (inside 2002:7f00:1::)"),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_ADDRESSES)
def test_a_non_public_address_is_refused_with_its_reason(address: str, reason: str) -> None:
    with pytest.raises(RefusedDestination) as refused:
        EgressPolicy().check(ipaddress.ip_address(address))

    assert str(refused.value).endswith(f"is {reason}")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700:4700::1111", "8.8.8.8"])
def test_a_public_address_is_allowed(address: str) -> None:
    EgressPolicy().check(ipaddress.ip_address(address))


def test_the_operator_allow_list_admits_its_networks_and_nothing_else() -> None:
    policy = EgressPolicy.from_cidrs(["10.20.0.0/16", "127.0.0.1/32"])

    policy.check(ipaddress.ip_address("10.20.3.4"))
    policy.check(ipaddress.ip_address("127.0.0.1"))
    for refused in ("10.21.0.1", "127.0.0.2", "169.254.169.254"):
        with pytest.raises(RefusedDestination):
            policy.check(ipaddress.ip_address(refused))


async def set_target(
    reports: ReportHarness,
    url: str,
    *,
    token: str = "",
    clinic: str = CLINIC,
) -> DeliveryTarget:
    """SetDeliveryTarget as the clinic's admin."""
    response = await reports.report.set_delivery_target(
        SetDeliveryTargetRequest(
            delivery_target=DeliveryTarget(
                name=f"clinics/{clinic}/deliveryTarget",
                fhir_base_url=url,
                bearer_token=token,
                enabled=True,
            )
        ),
        metadata=reports.metadata(clinic_id=clinic, roles=("admin",)),
    )
    return response.delivery_target


def field_violations(call: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """(field, description) of the call's google.rpc.BadRequest detail."""
    status = rpc_status.from_call(call)  # type: ignore[arg-type]
    assert status is not None, "no google.rpc.Status details"
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found += [(v.field, v.description) for v in bad_request.field_violations]
    return found


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://127.0.0.2:8443/fhir", "a loopback address"),  # only 127.0.0.1/32 is allowed
        ("https://[::1]/fhir", "a loopback address"),
        ("https://169.254.169.254/latest/meta-data", "a cloud metadata address"),
        ("https://[fd00:ec2::254]/fhir", "a cloud metadata address"),
        ("https://10.0.0.5/fhir", "a private address"),
        ("https://192.168.0.1:9443/fhir", "a private address"),
        ("https://[fe80::1]/fhir", "a link-local address"),
        ("https://224.0.0.1/fhir", "a multicast address"),
        ("https://0.0.0.0/fhir", "the unspecified address"),
        ("https://[::ffff:127.0.0.1]/fhir", "a loopback address"),  # mapped: not the allowed v4
        ("https://mis.invalid/fhir", "does not resolve"),
    ],
)
async def test_set_delivery_target_refuses_a_url_that_leads_somewhere_private(
    reports: ReportHarness, url: str, reason: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await set_target(reports, url, token=TOKEN)

    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = field_violations(error.value)
    assert [field for field, _ in violations] == ["delivery_target.fhir_base_url"]
    assert reason in violations[0][1]
    assert await reports.execute("SELECT * FROM report.delivery_targets") == []


async def test_a_stored_target_that_now_leads_to_a_refused_address_fails_without_a_request(
    reports: ReportHarness, mis: MisReceiver
) -> None:
    await set_target(reports, mis.base_url, token=TOKEN)
    # The URL changed behind the guard's back (DNS now answers 169.254.169.254, say).
    await reports.execute(
        "UPDATE report.delivery_targets SET fhir_base_url = 'https://169.254.169.254/fhir'"
    )
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)

    await reports.wait_for_delivery(str(row["report_id"]), int(DeliveryStatus.FAILED))

    receipts = await reports.execute(
        "SELECT http_status, error FROM report.delivery_receipts WHERE report_id = %s",
        (row["report_id"],),
    )
    assert len(receipts) == 1  # refused once, never retried
    assert receipts[0]["http_status"] == 0
    assert "169.254.169.254 is a cloud metadata address" in receipts[0]["error"]
    assert mis.state.requests == []


class _PinnedTo(EgressPolicy):
    """A policy whose DNS answers `address` for every name (and checks it as usual)."""

    def __init__(self, address: str) -> None:
        super().__init__([ipaddress.ip_network("127.0.0.1/32")])
        self.address = ipaddress.ip_address(address)
        self.lookups = 0

    async def resolve(self, url: str) -> Destination:
        self.lookups += 1
        self.check(self.address)
        return Destination(MIS_HOST_NAME, int(url.split(":")[2].split("/")[0]), self.address)


async def test_the_connection_goes_to_the_checked_address_with_the_host_name_kept_for_tls(
    mis: MisReceiver,
) -> None:
    # MIS_HOST_NAME is in no DNS: the request can only arrive through the pinned address, and
    # TLS still verifies the certificate against the name.
    port = mis.base_url.rsplit(":", 1)[1].split("/")[0]
    policy = _PinnedTo("127.0.0.1")
    client = MisClient(ReportConfig(mis_ca_file=str(mis.ca_file), mis_attempts=1), policy)
    receipts: list[Receipt] = []

    async def keep(receipt: Receipt) -> None:
        receipts.append(receipt)

    try:
        receipt = await client.post(
            MisEndpoint(f"https://{MIS_HOST_NAME}:{port}/fhir", TOKEN),
            {"resourceType": "DiagnosticReport"},
            idempotency_key="key-pinned",
            report_id="r1",
            on_attempt=keep,
        )
        policy.address = ipaddress.ip_address("10.0.0.1")  # the name now "rebinds"
        with pytest.raises(MisRejected):
            await client.post(
                MisEndpoint(f"https://{MIS_HOST_NAME}:{port}/fhir", TOKEN),
                {"resourceType": "DiagnosticReport"},
                idempotency_key="key-rebound",
                report_id="r2",
                on_attempt=keep,
            )
    finally:
        await client.close()

    assert receipt.http_status == 201
    assert [r.headers["Host"] for r in mis.state.requests] == [f"{MIS_HOST_NAME}:{port}"]
    assert mis.state.requests[0].headers["Authorization"] == f"Bearer {TOKEN}"
    assert policy.lookups == 2  # checked again at the second delivery, which went nowhere
    assert "10.0.0.1 is a private address" in receipts[-1].error


@pytest.fixture
def second_mis(tls_files: TlsFiles) -> Iterator[MisReceiver]:
    """Another clinic's (or the new) MIS."""
    with running_mis(tls_files) as receiver:
        yield receiver


@pytest.fixture
def report_extra(report_extra: dict[str, str]) -> dict[str, str]:
    """Short MIS deadlines, one retry: a slow MIS fails in seconds."""
    return {
        **report_extra,
        "MEDMESH_REPORT_MIS_TIMEOUT_S": "2",
        "MEDMESH_REPORT_MIS_ATTEMPTS": "2",
        "MEDMESH_REPORT_MIS_DELIVERY_DEADLINE_S": "30",
        "MEDMESH_REPORT_MIS_MAX_RESPONSE_BYTES": "4096",
    }


async def test_a_slow_mis_does_not_hold_up_another_clinics_delivery_and_is_cut_off(
    reports: ReportHarness, mis: MisReceiver, second_mis: MisReceiver
) -> None:
    mis.state.drip_s = 0.5  # answers a byte every half second: no read timeout ever fires
    await set_target(reports, mis.base_url, token=TOKEN)
    await set_target(reports, second_mis.base_url, token=TOKEN, clinic=OTHER_CLINIC)
    slow_study = await reports.seed_study()
    await reports.announce(slow_study)
    slow = await reports.wait_for_report(slow_study.study_id)
    assert await asyncio.to_thread(mis.state.started.wait, 30)

    started = time.monotonic()
    other_study = await reports.seed_study(clinic_id=OTHER_CLINIC)
    await reports.announce(other_study)
    other = await reports.wait_for_report(other_study.study_id)
    await reports.wait_for_delivery(str(other["report_id"]), int(DeliveryStatus.DELIVERED))
    other_took = time.monotonic() - started

    slow_now = await reports.execute(
        "SELECT delivery_status FROM report.reports WHERE report_id = %s", (slow["report_id"],)
    )
    assert slow_now[0]["delivery_status"] == int(DeliveryStatus.PENDING)  # still stuck
    await reports.wait_for_delivery(str(slow["report_id"]), int(DeliveryStatus.FAILED))
    receipts = await reports.execute(
        "SELECT http_status, error FROM report.delivery_receipts WHERE report_id = %s "
        "ORDER BY id",
        (slow["report_id"],),
    )
    assert [(r["http_status"], r["error"]) for r in receipts] == [
        (0, "no complete answer within 2 s")
    ] * 2
    assert other_took < 15, other_took


async def test_receipts_keep_the_status_code_not_the_mis_response_body(
    reports: ReportHarness, mis: MisReceiver
) -> None:
    mis.state.statuses = [500, 422]
    mis.state.echo = "ECHOED-PATIENT-DATA Bearer mis-token-one"
    await set_target(reports, mis.base_url, token=TOKEN)
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)

    await reports.wait_for_delivery(str(row["report_id"]), int(DeliveryStatus.FAILED))

    receipts = await reports.execute(
        "SELECT http_status, error FROM report.delivery_receipts WHERE report_id = %s "
        "ORDER BY id",
        (row["report_id"],),
    )
    assert [(r["http_status"], r["error"]) for r in receipts] == [
        (500, "HTTP 500 Internal Server Error"),
        (422, "HTTP 422 Unprocessable Entity"),
    ]
    deliveries = await reports.execute(
        "SELECT error FROM report.deliveries WHERE report_id = %s", (row["report_id"],)
    )
    letters = await reports.messages(
        reports.topology.dlq_subject(reports.topology.deliver_subject), DeadLetterEnvelope
    )
    for text in [deliveries[0]["error"], letters[0].error]:
        assert "ECHOED" not in text
        assert TOKEN not in text


async def test_a_huge_answer_is_read_only_up_to_the_cap_and_the_id_comes_from_location(
    reports: ReportHarness, mis: MisReceiver
) -> None:
    mis.state.padding = 8 * 1024 * 1024
    await set_target(reports, mis.base_url, token=TOKEN)
    study = await reports.seed_study()
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)

    await reports.wait_for_delivery(str(row["report_id"]), int(DeliveryStatus.DELIVERED))

    receipts = await reports.execute(
        "SELECT http_status, mis_id FROM report.delivery_receipts WHERE report_id = %s",
        (row["report_id"],),
    )
    assert [(r["http_status"], r["mis_id"]) for r in receipts] == [
        (201, next(iter(mis.state.ids.values())))
    ]


async def delivered_authorization(
    reports: ReportHarness, receiver: MisReceiver, clinic: str = CLINIC
) -> str | None:
    """Deliver a fresh report of `clinic` and return the Authorization header it carried."""
    study = await reports.seed_study(clinic_id=clinic)
    await reports.announce(study)
    row = await reports.wait_for_report(study.study_id)
    await reports.wait_for_delivery(str(row["report_id"]), int(DeliveryStatus.DELIVERED))
    return receiver.state.requests[-1].headers.get("Authorization")


async def test_the_bearer_token_is_stored_encrypted_and_sent_decrypted(
    reports: ReportHarness, mis: MisReceiver
) -> None:
    await set_target(reports, mis.base_url, token=TOKEN)

    rows = await reports.execute(
        "SELECT bearer_token, bearer_token_sealed FROM report.delivery_targets"
    )
    assert rows[0]["bearer_token"] == ""
    assert TOKEN.encode() not in bytes(rows[0]["bearer_token_sealed"])
    assert SecretBox([REPORT_KEK]).open(rows[0]["bearer_token_sealed"]) == TOKEN
    assert await delivered_authorization(reports, mis) == f"Bearer {TOKEN}"


async def test_a_new_url_without_a_new_token_drops_the_old_token(
    reports: ReportHarness, mis: MisReceiver, second_mis: MisReceiver
) -> None:
    await set_target(reports, mis.base_url, token=TOKEN)

    moved = await set_target(reports, second_mis.base_url)

    assert moved.bearer_token_set is False
    read = await reports.report.get_delivery_target(
        GetDeliveryTargetRequest(name=f"clinics/{CLINIC}/deliveryTarget"),
        metadata=reports.metadata(roles=("admin",)),
    )
    assert read.delivery_target.bearer_token_set is False
    assert await delivered_authorization(reports, second_mis) is None
    audit = await reports.execute(
        "SELECT detail FROM audit.events WHERE action = 'report.delivery_target.set' ORDER BY id"
    )
    assert [a["detail"]["bearer_token_dropped"] for a in audit] == [False, True]


async def test_a_new_url_with_a_new_token_uses_the_new_token(
    reports: ReportHarness, mis: MisReceiver, second_mis: MisReceiver
) -> None:
    await set_target(reports, mis.base_url, token=TOKEN)

    moved = await set_target(reports, second_mis.base_url, token="mis-token-two")

    assert moved.bearer_token_set is True
    assert await delivered_authorization(reports, second_mis) == "Bearer mis-token-two"


async def test_a_token_stored_in_plain_text_before_encryption_is_sealed(
    reports: ReportHarness,
) -> None:
    await reports.execute(
        "INSERT INTO report.delivery_targets (clinic_id, fhir_base_url, bearer_token) "
        "VALUES ('clinic-legacy', 'https://mis.example/fhir', 'legacy-token')"
    )
    box = SecretBox([REPORT_KEK])

    async with await psycopg.AsyncConnection.connect(
        reports.database_url, row_factory=dict_row
    ) as conn:
        sealed = await delivery_store.seal_plaintext_tokens(conn, box.seal)
        target = await delivery_store.get_target(conn, "clinic-legacy")
        again = await delivery_store.seal_plaintext_tokens(conn, box.seal)

    assert (sealed, again) == (1, 0)
    assert target is not None
    assert target.bearer_token_sealed is not None
    assert box.open(target.bearer_token_sealed) == "legacy-token"
    rows: list[dict[str, Any]] = await reports.execute(
        "SELECT bearer_token FROM report.delivery_targets WHERE clinic_id = 'clinic-legacy'"
    )
    assert rows == [{"bearer_token": ""}]
