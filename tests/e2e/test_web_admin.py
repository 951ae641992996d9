"""The web app's admin screens in headless chromium against `medmesh up` (the stack and the
browser shared with test_web_app.py through conftest.py): the demo clinic's admin invites a
technician, the invitation mail's link creates the account, the admin changes its role to
clinician and approves a self-registered account, sees a private MIS URL refused next to its
field, reads the model registry and inspects and replays a dead letter; an admin of another
clinic sees none of the clinic's users and is refused registry changes.

Screenshots of each admin screen go to this module's output folder, and to
MEDMESH_SCREENSHOTS_DIR when set (the README's come from `docs/screenshots`).
"""

from __future__ import annotations

import asyncio
import email
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats
import pytest
from playwright.async_api import Browser, BrowserContext, Page
from support.stack import Stack

from gen.medmesh.events.v1 import DeadLetterEnvelope, ReportJob
from medmesh.jetstream import Topology

ADMIN = "admin@demo-clinic.example"
INVITED = "invited.technician@demo-clinic.example"
PENDING = "pending.doctor@demo-clinic.example"
OTHER_ADMIN = "admin@clinic-admin-e2e.example"
PASSWORD = "a-Long-enough-Passphrase-42"
NOTE = "Dry cough for two weeks and mild fever; rule out pneumonia."
REPORT_TIMEOUT_S = 180


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the screenshots go; copied to MEDMESH_SCREENSHOTS_DIR at the end when set."""
    folder = tmp_path_factory.mktemp("admin-screenshots")
    yield folder
    target = os.environ.get("MEDMESH_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copyfile(shot, Path(target) / shot.name)


@pytest.fixture(scope="module")
async def reported_study(web_stack: Stack) -> str:
    """A study of the demo clinic with a clinical note, analysed and reported (its report id):
    a row for the delivery screen, and the text model registered (the registry registers a
    model's served versions when it first routes a job)."""
    async with httpx.AsyncClient(base_url=web_stack.status["edge"], timeout=30) as api:
        headers = await _login(api, ADMIN, _admin_password(web_stack))
        created = await api.post("/v1/studies", json={"patientRef": "P-admin-e2e"}, headers=headers)
        assert created.status_code == 200, created.text
        study = created.json()["study"]["name"]
        note = await api.post(
            f"/v1/{study}/files:createTextNote", json={"text": NOTE}, headers=headers
        )
        assert note.status_code == 200, note.text
        for _ in range(REPORT_TIMEOUT_S * 2):
            reports = await api.get("/v1/reports", params={"study": study}, headers=headers)
            ready = [
                r for r in reports.json().get("reports", []) if r["status"] == "REPORT_STATUS_READY"
            ]
            if ready:
                return ready[0]["reportId"]
            await asyncio.sleep(0.5)
    raise AssertionError(f"no report of {study} within {REPORT_TIMEOUT_S} s")


@pytest.fixture
async def context(web_browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile in English at a laptop's size."""
    created = await web_browser.new_context(locale="en-US", viewport={"width": 1280, "height": 860})
    yield created
    await created.close()


class Watched:
    """A page and what it reported: console errors (CSP violations among them) and uncaught
    exceptions, except the refusals the test provokes on purpose."""

    def __init__(self, page: Page, expected: tuple[str, ...] = ()) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        page.on(
            "console",
            lambda m: m.type == "error"
            and not any(e in m.text for e in expected)
            and self.problems.append(m.text),
        )


def _admin_password(stack: Stack) -> str:
    return (stack.data_dir / "secrets" / "admin-password").read_text().strip()


async def _sign_in(page: Page, base: str, user: str, password: str) -> None:
    await page.goto(f"{base}/")
    await page.wait_for_url("**/sign-in")
    await page.get_by_label("E-mail").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/studies")


async def _link_in_mail(stack: Stack, address: str, page: str) -> str:
    """The `{page}#token=` link of the newest mail to `address` (waiting for the SMTP sink)."""
    pattern = re.compile(rf"http://\S+/{page}#token=[^\s<>\"]+")
    for _ in range(150):
        for path in sorted((stack.data_dir / "mail").glob("*.eml"), reverse=True):
            message = email.message_from_bytes(path.read_bytes())
            if address not in (message["To"] or ""):
                continue
            parts = message.walk() if message.is_multipart() else [message]
            for part in parts:
                if part.get_content_type() == "text/plain":
                    found = pattern.search(part.get_payload(decode=True).decode())
                    if found:
                        return found.group(0)
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {page} mail to {address}")


async def _login(api: httpx.AsyncClient, email_address: str, password: str) -> dict[str, str]:
    """Bearer headers of a REST sign-in at the edge."""
    login = await api.post("/v1/auth:login", json={"email": email_address, "password": password})
    assert login.status_code == 200, login.text
    return {"authorization": f"Bearer {login.json()['accessToken']}"}


async def _users(stack: Stack, email_address: str, password: str) -> dict[str, dict]:
    """The clinic's users by e-mail, as ListUsers returns them over REST to that admin."""
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as api:
        listed = await api.get("/v1/users", headers=await _login(api, email_address, password))
        assert listed.status_code == 200, listed.text
    return {u["email"]: u for u in listed.json()["users"]}


async def _register(stack: Stack, address: str, name: str) -> None:
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as api:
        registered = await api.post(
            "/v1/users:register",
            json={
                "email": address,
                "password": PASSWORD,
                "displayName": name,
                "clinicId": "demo-clinic",
            },
        )
        assert registered.status_code == 200, registered.text
    link = await _link_in_mail(stack, address, "verify-email")
    token = link.split("#token=", 1)[1]
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as api:
        verified = await api.post("/v1/users:verifyEmail", json={"token": token})
        assert verified.status_code == 200, verified.text


async def _bootstrap_admin(stack: Stack, clinic: str, address: str, password: str) -> None:
    """An admin of another clinic, created like an operator would (svc_auth's bootstrap)."""
    env = {
        **os.environ,
        "MEDMESH_POSTGRES_URL": stack.printed_value("postgres"),
        "MEDMESH_AUTH_BOOTSTRAP_PASSWORD": password,
    }
    command = [sys.executable, "-m", "svc_auth.bootstrap", "--clinic", clinic]
    command += ["--email", address, "--role", "admin"]
    await asyncio.to_thread(
        subprocess.run, command, env=env, check=True, capture_output=True, timeout=60
    )


async def _dead_letter(stack: Stack, report_id: str) -> None:
    """A report job of the demo clinic in the dead-letter stream, as a failing consumer puts it."""
    topology = Topology()
    now = datetime.now(UTC)
    job = ReportJob(
        job_id=str(uuid.uuid4()),
        clinic_id="demo-clinic",
        study_id=str(uuid.uuid4()),
        report_id=report_id,
        requested_by="e2e",
        enqueue_time=now,
    )
    envelope = DeadLetterEnvelope(
        original_subject=topology.report_subject,
        payload=bytes(job),
        error="report generation failed: the e2e test's job names no report",
        attempts=4,
        first_failure_time=now,
        last_failure_time=now,
        clinic_id="demo-clinic",
        msg_id=job.job_id,
    )
    connection = await nats.connect(stack.printed_value("nats"))
    try:
        await connection.jetstream().publish(
            topology.dlq_subject(topology.report_subject), bytes(envelope)
        )
    finally:
        await connection.drain()


async def test_an_admin_invites_a_user_changes_its_role_and_approves_a_pending_account(
    web_stack: Stack, context: BrowserContext, screenshots: Path
) -> None:
    stack = web_stack
    base = stack.status["edge"]
    watched = Watched(await context.new_page())
    page = watched.page
    await _sign_in(page, base, ADMIN, _admin_password(stack))
    await page.get_by_role("link", name="Admin").click()
    await page.wait_for_url("**/admin/users")
    await page.get_by_test_id("user-row").first.wait_for()

    invite = page.get_by_test_id("invite-form")
    await invite.get_by_label("E-mail").fill(INVITED)
    await invite.get_by_label("Name").fill("Invited Technician")
    await invite.get_by_label("Clinician").uncheck()
    await invite.get_by_label("Technician").check()
    await invite.get_by_role("button", name="Send invitation").click()
    await page.get_by_text(f"Invitation sent to {INVITED}").wait_for()

    # The invited person follows the mail's link in a browser of their own.
    link = await _link_in_mail(stack, INVITED, "accept-invitation")
    assert link.startswith(f"{base}/accept-invitation#token=")
    invited = Watched(await context.new_page())
    await invited.page.goto(link)
    await invited.page.get_by_label("New password", exact=True).fill(PASSWORD)
    await invited.page.get_by_label("Repeat the new password").fill(PASSWORD)
    await invited.page.get_by_role("button", name="Join").click()
    await invited.page.get_by_test_id("invitation-accepted").wait_for()
    await invited.page.close()

    await page.reload()
    row = page.locator(f"[data-testid=user-row][data-email='{INVITED}']")
    await row.wait_for()
    assert await row.get_by_test_id("user-roles").inner_text() == "Technician"
    await row.get_by_role("button", name="Change roles").click()
    await row.get_by_label("Technician").uncheck()
    await row.get_by_label("Clinician").check()
    await page.screenshot(path=screenshots / "admin-users-change-roles.png")
    await row.get_by_test_id("save-roles").click()
    await page.get_by_text("Roles of Invited Technician are saved.").wait_for()
    await page.wait_for_function(
        f"""document.querySelector("[data-testid=user-row][data-email='{INVITED}'] """
        """[data-testid=user-roles]")?.textContent === 'Clinician'"""
    )
    users = await _users(stack, ADMIN, _admin_password(stack))
    assert users[INVITED]["roles"] == ["ROLE_CLINICIAN"]
    assert users[INVITED]["approvalState"] == "APPROVAL_STATE_APPROVED"

    # A self-registered account waits for approval; the filter finds it, the admin approves.
    await _register(stack, PENDING, "Pending Doctor")
    await page.get_by_test_id("approval-filter").select_option(label="Waiting for approval")
    pending = page.locator(f"[data-testid=user-row][data-email='{PENDING}']")
    await pending.wait_for()
    await page.screenshot(path=screenshots / "admin-users-pending.png")
    await pending.get_by_test_id("approve").click()
    await page.get_by_text("Pending Doctor is approved.").wait_for()
    await pending.wait_for(state="detached")
    await page.get_by_test_id("approval-filter").select_option(label="All users")
    await page.locator(f"[data-testid=user-row][data-email='{INVITED}']").wait_for()
    await page.screenshot(path=screenshots / "admin-users.png", full_page=True)
    users = await _users(stack, ADMIN, _admin_password(stack))
    assert users[PENDING]["approvalState"] == "APPROVAL_STATE_APPROVED"

    await page.get_by_test_id("language").select_option("ru")
    await page.get_by_role("heading", name="Пользователи и роли").wait_for()
    await page.screenshot(path=screenshots / "admin-users-ru.png")
    await page.get_by_test_id("language").select_option("en")
    assert watched.problems == []


async def test_an_admin_sees_a_private_mis_url_refused_next_to_its_field_and_the_reports(
    web_stack: Stack, context: BrowserContext, screenshots: Path, reported_study: str
) -> None:
    base = web_stack.status["edge"]
    watched = Watched(await context.new_page(), expected=("400", "invalid delivery target"))
    page = watched.page
    await _sign_in(page, base, ADMIN, _admin_password(web_stack))
    await page.goto(f"{base}/admin/delivery")
    form = page.get_by_test_id("delivery-target")
    await form.get_by_label("FHIR base URL").fill("https://10.0.0.7/fhir")
    await form.get_by_label("Notify by e-mail").fill("ward@demo-clinic.example")
    await form.get_by_role("button", name="Save").click()
    problem = form.get_by_test_id("field-error").first
    await problem.wait_for()
    assert "is not an address reports may be sent to" in await problem.inner_text()
    field = form.locator(".field", has=page.get_by_test_id("field-error")).first
    assert await field.locator("input").get_attribute("name") == "fhir_base_url"
    assert await form.get_by_role("alert").inner_text() == "Some fields need attention."

    # The clinic has no target, so its report was not sent and cannot be sent again.
    report = page.locator(f"[data-testid=report-row][data-report='{reported_study}']")
    status = report.get_by_test_id("delivery-status")
    assert await status.get_attribute("data-status") == "NOT_CONFIGURED"
    await page.screenshot(path=screenshots / "admin-delivery.png", full_page=True)
    await report.get_by_test_id("redeliver").click()
    refusal = report.get_by_role("alert")
    await refusal.wait_for()
    assert "This cannot be done in the current state." in await refusal.inner_text()
    assert watched.problems == []


async def test_an_admin_inspects_and_replays_a_dead_letter_and_reads_the_models(
    web_stack: Stack, context: BrowserContext, screenshots: Path, reported_study: str
) -> None:
    base = web_stack.status["edge"]
    report_id = str(uuid.uuid4())
    await _dead_letter(web_stack, report_id)
    watched = Watched(await context.new_page())
    page = watched.page
    await _sign_in(page, base, ADMIN, _admin_password(web_stack))

    await page.goto(f"{base}/admin/models")
    minilm = page.locator("[data-testid=model][data-model=minilm]")
    await minilm.wait_for()
    stable = await minilm.get_by_test_id("stable-version").inner_text()
    assert re.fullmatch(r"v\d+", stable), stable
    await minilm.get_by_test_id("split-form").wait_for()  # the operator clinic may change it
    await page.screenshot(path=screenshots / "admin-models.png", full_page=True)

    await page.get_by_role("link", name="Dead letters").click()
    await page.wait_for_url("**/admin/dead-letters")
    letter = page.locator("[data-testid=dead-letter]", has_text="the e2e test's job")
    for _ in range(100):  # the DLQ index is filled by a consumer, shortly after the publish
        if await letter.count():
            break
        await asyncio.sleep(0.2)
        await page.get_by_role("button", name="Filter").click()
    await letter.get_by_test_id("inspect").click()
    payload = await page.get_by_test_id("payload").inner_text()
    assert report_id in payload
    assert '"requestedBy": "e2e"' in payload
    await page.screenshot(path=screenshots / "admin-dead-letters.png", full_page=True)
    await letter.get_by_test_id("replay").click()
    await letter.get_by_test_id("replayed").wait_for()
    assert await letter.get_by_test_id("replay").count() == 0
    assert watched.problems == []


async def test_an_admin_of_another_clinic_sees_none_of_its_users_and_cannot_change_models(
    web_stack: Stack, context: BrowserContext, screenshots: Path, reported_study: str
) -> None:
    base = web_stack.status["edge"]
    await _bootstrap_admin(web_stack, "clinic-admin-e2e", OTHER_ADMIN, PASSWORD)
    watched = Watched(await context.new_page(), expected=("operator", "403"))
    page = watched.page
    await _sign_in(page, base, OTHER_ADMIN, PASSWORD)
    await page.goto(f"{base}/admin/users")
    await page.locator(f"[data-testid=user-row][data-email='{OTHER_ADMIN}']").wait_for()
    assert await page.get_by_test_id("user-row").count() == 1
    assert "demo-clinic.example" not in await page.get_by_test_id("users").inner_text()

    await page.get_by_role("link", name="Models").click()
    card = page.locator("[data-testid=model][data-model=minilm]")
    await card.wait_for()
    weight = card.get_by_test_id("split-form").locator("input").first
    await weight.fill("100")
    await card.get_by_role("button", name="Save split").click()
    alert = card.get_by_role("alert")
    await alert.wait_for()
    assert "You are not allowed to do this." in await alert.inner_text()
    await card.get_by_test_id("models-read-only").wait_for()
    assert await card.get_by_test_id("split-form").count() == 0
    await page.screenshot(path=screenshots / "admin-models-refused.png", full_page=True)
    assert watched.problems == []
