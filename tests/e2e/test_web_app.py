"""The clinicians' web app in a real browser (Debian's headless chromium driven by
Playwright) against `medmesh up`: sign in as the demo clinic's admin, upload an image and a
note, watch the status turn to "report ready" live, read the results and the report, download
the PDF; follow a verification mail to its page; a user of another clinic sees none of it.

Screenshots of the main screens go to this module's output folder; with
MEDMESH_SCREENSHOTS_DIR set (the README's are made with `docs/screenshots`) they are copied
there too. Without /usr/bin/chromium the tests skip, unless MEDMESH_REQUIRE_BROWSER is set
(CI sets it): a browser is never downloaded.
"""

from __future__ import annotations

import asyncio
import email
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from email.message import Message
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest
from pypdf import PdfReader
from support.stack import Stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN = "admin@demo-clinic.example"
PATIENT = "P-web-0001"
NOTE = "Productive cough, fever of 39 C and crackles over the right lower lobe; suspect pneumonia."
REPORT_TIMEOUT_MS = 180_000

if not CHROMIUM.exists():
    if os.environ.get("MEDMESH_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)", allow_module_level=True)

from playwright.async_api import Browser, BrowserContext, Page, async_playwright  # noqa: E402


@pytest.fixture(scope="module")
def stack(web_stack: Stack) -> Stack:
    """The whole product, started once by `medmesh up` for every browser test of this folder
    (conftest.py's web_stack; it builds the web app first when web/dist is missing or stale)."""
    return web_stack


@pytest.fixture(scope="module")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Where the screenshots go; copied to MEDMESH_SCREENSHOTS_DIR at the end when set."""
    folder = tmp_path_factory.mktemp("screenshots")
    yield folder
    target = os.environ.get("MEDMESH_SCREENSHOTS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        for shot in folder.glob("*.png"):
            shutil.copyfile(shot, Path(target) / shot.name)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    """Headless Debian chromium (a fresh profile per context)."""
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        yield launched
        await launched.close()


class Watched:
    """A page with what it reported: console errors (CSP violations among them) and
    uncaught exceptions; a test ends by checking there were none."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda error: self.problems.append(f"exception: {error}"))
        page.on(
            "console",
            lambda message: message.type == "error" and self.problems.append(message.text),
        )


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile in English at a laptop's size."""
    created = await browser.new_context(
        locale="en-US", viewport={"width": 1280, "height": 860}, accept_downloads=True
    )
    yield created
    await created.close()


def _password(stack: Stack) -> str:
    return (stack.data_dir / "secrets" / "admin-password").read_text().strip()


async def _admin_headers(api: httpx.AsyncClient, stack: Stack) -> dict[str, str]:
    login = await api.post("/v1/auth:login", json={"email": ADMIN, "password": _password(stack)})
    assert login.status_code == 200, login.text
    return {"authorization": f"Bearer {login.json()['accessToken']}"}


async def _sign_in(page: Page, base: str, user: str, password: str) -> None:
    await page.goto(f"{base}/")
    await page.wait_for_url("**/sign-in")
    await page.get_by_label("E-mail").fill(user)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url("**/studies")


def _png(path: Path) -> Path:
    gradient = np.tile(np.linspace(0, 255, 224, dtype=np.uint8), (224, 1))
    ok, encoded = cv2.imencode(".png", cv2.merge([gradient, gradient.T, gradient]))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


# Records every status the new-study screen shows, from the first one on.
RECORD_STATUSES = """() => {
  window.__statuses = [];
  window.__sameDocument = true;
  const seen = () => {
    const badge = document.querySelector('[data-testid=new-study-status]');
    const status = badge && badge.dataset.status;
    if (status && window.__statuses.at(-1) !== status) window.__statuses.push(status);
  };
  new MutationObserver(seen).observe(document.body, {subtree: true, childList: true,
    attributes: true, attributeFilter: ['data-status']});
}"""


async def test_a_clinician_uploads_an_image_and_a_note_and_the_report_arrives_live(
    stack: Stack, context: BrowserContext, screenshots: Path, tmp_path: Path
) -> None:
    base = stack.status["edge"]
    assert stack.printed_value("web") == f"{base}/ (the web app)"
    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto(f"{base}/studies")
    await page.wait_for_url("**/sign-in")
    await page.screenshot(path=screenshots / "sign-in.png")
    await _sign_in(page, base, ADMIN, _password(stack))

    await page.get_by_role("link", name="New study").first.click()
    await page.get_by_label("Patient reference").fill(PATIENT)
    await page.get_by_label("Description").fill("Chest X-ray, productive cough")
    await page.get_by_test_id("file-input").set_input_files(_png(tmp_path / "chest.png"))
    await page.get_by_label("Clinical note").fill(NOTE)
    await page.screenshot(path=screenshots / "new-study.png")

    await page.evaluate(RECORD_STATUSES)
    await page.get_by_role("button", name="Create study and upload").click()
    await page.get_by_test_id("open-study").wait_for()
    row = page.get_by_test_id("upload-row")
    assert await row.get_attribute("data-state") == "done"
    assert await row.get_by_role("progressbar").get_attribute("aria-valuenow") == "100"
    final = page.locator("[data-testid=new-study-status][data-status=REPORT_READY]")
    await final.wait_for(timeout=REPORT_TIMEOUT_MS)
    await page.screenshot(path=screenshots / "new-study-report-ready.png")
    statuses = await page.evaluate("window.__statuses")
    assert statuses[0] == "CREATED"
    assert statuses[-1] == "REPORT_READY"
    assert len(statuses) >= 3, statuses
    assert await page.evaluate("window.__sameDocument") is True  # never reloaded

    await page.get_by_test_id("open-study").click()
    await page.wait_for_url(re.compile(r"/studies/[0-9a-f-]{36}$"))
    assert PATIENT not in page.url
    results = page.get_by_test_id("result")
    await results.nth(1).wait_for()
    image = page.get_by_test_id("processed-image")
    await image.wait_for()
    await page.wait_for_function(
        "document.querySelector('[data-testid=processed-image]').naturalWidth > 0"
    )
    provenance = " ".join(await page.get_by_test_id("provenance").all_inner_texts())
    assert "resnet50" in provenance
    assert "minilm" in provenance
    assert "Preprocessing" in provenance
    audit = await page.get_by_test_id("audit").inner_text()
    assert "study.create" in audit
    assert "result.store" in audit
    await page.screenshot(path=screenshots / "study-detail.png", full_page=True)

    await page.get_by_test_id("open-report").first.click()
    await page.wait_for_url(re.compile(r"/reports/[0-9a-f-]{36}$"))
    report = page.get_by_test_id("report-html")
    await report.get_by_text("Diagnostic report (AI-assisted)").wait_for()
    shown = await report.evaluate("host => host.shadowRoot.textContent")
    assert "pneumonia" in shown
    assert PATIENT in shown  # the report itself names the patient; the address does not
    await page.screenshot(path=screenshots / "report.png", full_page=True)
    async with page.expect_download() as download_info:
        await page.get_by_test_id("download-pdf").click()
    download = await download_info.value
    pdf = tmp_path / download.suggested_filename
    await download.save_as(pdf)
    assert pdf.name.endswith(".pdf")
    assert PATIENT not in pdf.name
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf.read_bytes())).pages)
    assert "pneumonia" in text
    assert "resnet50" in text

    await page.get_by_role("link", name="Studies").click()
    await page.get_by_test_id("study-row").first.wait_for()
    await page.screenshot(path=screenshots / "studies.png")
    await page.get_by_test_id("language").select_option("ru")
    await page.get_by_role("heading", name="Исследования").wait_for()
    await page.screenshot(path=screenshots / "studies-ru.png")

    # Nothing about the patient is kept in the browser beyond the page itself.
    stored = await page.evaluate("JSON.stringify([localStorage, sessionStorage])")
    assert PATIENT not in stored
    assert "medmesh.refreshToken" in stored
    assert await page.evaluate("Object.keys(localStorage)") == ["medmesh.locale"]
    assert watched.problems == []


async def test_the_studies_list_follows_an_unfinished_study_live_to_its_report(
    stack: Stack, context: BrowserContext
) -> None:
    base = stack.status["edge"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as api:
        headers = await _admin_headers(api, stack)
        created = await api.post("/v1/studies", json={"patientRef": "P-live"}, headers=headers)
        study = created.json()["study"]
        watched = Watched(await context.new_page())
        page = watched.page
        await _sign_in(page, base, ADMIN, _password(stack))
        row = page.locator(f"[data-testid=study-row][data-study='{study['studyId']}']")
        await row.locator("[data-testid=live][data-state=live]").wait_for()
        assert await row.get_by_test_id("study-status").get_attribute("data-status") == "CREATED"
        await page.evaluate("window.__sameDocument = true")

        note = await api.post(
            f"/v1/{study['name']}/files:createTextNote", json={"text": NOTE}, headers=headers
        )
        assert note.status_code == 200, note.text
    final = row.locator("[data-testid=study-status][data-status=REPORT_READY]")
    await final.wait_for(timeout=REPORT_TIMEOUT_MS)
    assert await page.evaluate("window.__sameDocument") is True
    assert watched.problems == []


def _mail_to(mail_dir: Path, address: str, containing: str = "") -> Message:
    for path in sorted(mail_dir.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes())
        if address in (message["To"] or "") and containing in _text(message):
            return message
    raise AssertionError(f"no mail to {address}")


async def _link_in_mail(stack: Stack, address: str, page: str) -> str:
    """The `{page}#token=` link of the mail to `address` (waiting for the SMTP sink)."""
    for _ in range(100):
        try:
            text = _text(_mail_to(stack.data_dir / "mail", address, f"/{page}#token="))
            break
        except AssertionError:
            await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"no {page} mail to {address}")
    link = re.search(rf"http://\S+/{page}#token=[^\s<>\"]+", text)
    assert link, text
    assert link.group(0).startswith(f"{stack.status['edge']}/{page}#token=")
    return link.group(0)


async def _register(stack: Stack, address: str) -> None:
    async with httpx.AsyncClient(base_url=stack.status["edge"], timeout=30) as api:
        registered = await api.post(
            "/v1/users:register",
            json={
                "email": address,
                "password": "a-Long-enough-Passphrase-42",
                "displayName": "New Clinician",
                "clinicId": "demo-clinic",
            },
        )
        assert registered.status_code == 200, registered.text


def _text(message: Message) -> str:
    parts = message.walk() if message.is_multipart() else [message]
    return "".join(
        part.get_payload(decode=True).decode()
        for part in parts
        if part.get_content_type() == "text/plain"
    )


async def test_the_verification_mails_link_opens_the_app_and_verifies_the_address(
    stack: Stack, context: BrowserContext, screenshots: Path
) -> None:
    base = stack.status["edge"]
    address = "new.clinician@demo-clinic.example"
    await _register(stack, address)
    link = await _link_in_mail(stack, address, "verify-email")

    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto(link)
    await page.get_by_test_id("verified").wait_for()
    assert "#" not in page.url  # the token left the address bar and the history
    await page.screenshot(path=screenshots / "verify-email.png")

    async with httpx.AsyncClient(base_url=base, timeout=30) as api:
        users = await api.get("/v1/users", headers=await _admin_headers(api, stack))
    verified = {u["email"]: u.get("emailVerified", False) for u in users.json()["users"]}
    assert verified[address] is True
    assert watched.problems == []


async def test_a_reset_mail_leads_to_its_page_where_a_weak_password_is_refused_at_its_field(
    stack: Stack, context: BrowserContext, screenshots: Path
) -> None:
    base = stack.status["edge"]
    address = "forgetful@demo-clinic.example"
    await _register(stack, address)
    watched = Watched(await context.new_page())
    page = watched.page
    await page.goto(f"{base}/reset-password")
    await page.get_by_label("E-mail").fill(address)
    await page.get_by_role("button", name="Send the link").click()
    await page.get_by_text("If an account exists for this address").wait_for()

    # The link opens in the tab that asked for it: only the fragment changes.
    await page.goto(await _link_in_mail(stack, address, "reset-password"))
    await page.get_by_role("heading", name="Set a new password").wait_for()
    assert "#" not in page.url
    for label in ("New password", "Repeat the new password"):
        await page.get_by_label(label, exact=True).fill("short")
    await page.get_by_role("button", name="Set password").click()
    refused = page.get_by_test_id("field-error")
    await refused.wait_for()
    assert "at least" in await refused.inner_text()
    field = page.locator(".field", has=refused)
    assert await field.locator("input").get_attribute("name") == "new_password"
    assert "Some fields need attention." in await page.get_by_role("alert").inner_text()
    await page.screenshot(path=screenshots / "reset-password-refused.png")

    for label in ("New password", "Repeat the new password"):
        await page.get_by_label(label, exact=True).fill("a-Different-long-Passphrase-7")
    await page.get_by_role("button", name="Set password").click()
    await page.get_by_test_id("password-changed").wait_for()
    assert watched.problems == []


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


async def test_a_user_of_another_clinic_sees_none_of_the_clinics_studies(
    stack: Stack, context: BrowserContext, screenshots: Path
) -> None:
    base = stack.status["edge"]
    async with httpx.AsyncClient(base_url=base, timeout=30) as api:
        headers = await _admin_headers(api, stack)
        created = await api.post("/v1/studies", json={"patientRef": "P-private"}, headers=headers)
        study_id = created.json()["study"]["studyId"]
    password = "another-clinic-Secret-42"
    await _bootstrap_admin(stack, "clinic-b", "admin@clinic-b.example", password)

    watched = Watched(await context.new_page())
    page = watched.page
    await _sign_in(page, base, "admin@clinic-b.example", password)
    await page.get_by_text("No studies yet.").wait_for()
    assert await page.get_by_test_id("study-row").count() == 0
    await page.goto(f"{base}/studies/{study_id}")
    alert = page.get_by_role("alert")
    await alert.wait_for()
    assert await alert.inner_text() != ""
    assert "Not found." in await alert.inner_text()
    assert "P-private" not in await page.content()
    await page.screenshot(path=screenshots / "other-clinic-not-found.png")
    assert watched.problems == []
