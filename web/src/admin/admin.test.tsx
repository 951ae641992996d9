// The admin screens with a scripted server: changing a user's roles, approving, the
// PERMISSION_DENIED of a registry change, SetDeliveryTarget's field violations put next to
// their fields (decoded from real gRPC-Web trailers), dead-letter payloads decoded.
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { fireEvent, screen, waitFor, within } from "@testing-library/react";
import { ApprovalState, UserSchema, type User } from "@gen/medmesh/auth/v1/user_pb";
import { Role } from "@gen/medmesh/common/v1/common_pb";
import { ReportJobSchema } from "@gen/medmesh/events/v1/events_pb";
import { ModelSchema, ModelVersionState, TrafficWeightSchema } from "@gen/medmesh/infer/v1/model_pb";
import { DeadLetterSchema } from "@gen/medmesh/infer/v1/result_pb";
import { createApi, type Api } from "../api/client";
import { Layout } from "../app/Layout";
import { ADMIN_USER, grpcWebBadRequest, grpcWebEmpty, grpcWebError, renderAsAdmin } from "./testing";
import { DeadLettersPage } from "./DeadLettersPage";
import { DeliveryPage } from "./DeliveryPage";
import { ModelsPage, forgetRegistryRefusals } from "./ModelsPage";
import { UsersPage } from "./UsersPage";
import { decodePayload } from "./payload";

const noTokens = { accessToken: () => "", refresh: async () => false };

function user(id: string, fields: MessageInitShape<typeof UserSchema>): User {
  return create(UserSchema, {
    name: `users/${id}`,
    userId: id,
    clinicId: "demo-clinic",
    emailVerified: true,
    approvalState: ApprovalState.APPROVED,
    createTime: timestampFromDate(new Date("2026-03-01T09:30:00Z")),
    ...fields,
  });
}

/** A clinic's users held by a fake AuthService: ListUsers reads them, changes write them. */
function fakeAuth(initial: User[]) {
  const users = new Map(initial.map((u) => [u.name, u]));
  const auth = {
    listUsers: vi.fn(async (request: { approvalState: ApprovalState }) => ({
      users: [...users.values()].filter((u) => !request.approvalState || u.approvalState === request.approvalState),
      nextPageToken: "",
    })),
    setUserRoles: vi.fn(async (request: { name: string; roles: Role[] }) => {
      if (request.name === ADMIN_USER.name && !request.roles.includes(Role.ADMIN)) {
        throw new ConnectError("it would leave the clinic without an enabled admin", Code.FailedPrecondition);
      }
      const changed = create(UserSchema, { ...users.get(request.name)!, roles: request.roles, updateTime: timestampFromDate(new Date()) });
      users.set(request.name, changed);
      return { user: changed };
    }),
    approveUser: vi.fn(async (request: { name: string }) => {
      const changed = create(UserSchema, { ...users.get(request.name)!, approvalState: ApprovalState.APPROVED, updateTime: timestampFromDate(new Date()) });
      users.set(request.name, changed);
      return { user: changed };
    }),
  };
  return auth;
}

const row = (email: string) => screen.getAllByTestId("user-row").find((r) => r.dataset.email === email)!;

describe("users and roles", () => {
  it("changes a user's roles: edit, tick, save, and the list shows the new roles", async () => {
    const auth = fakeAuth([
      ADMIN_USER,
      user("u-2", { email: "tech@demo-clinic.example", displayName: "Tech Nician", roles: [Role.TECHNICIAN] }),
    ]);
    await renderAsAdmin(<UsersPage />, { auth } as unknown as Partial<Api>);
    await screen.findByText("Tech Nician");
    const tech = row("tech@demo-clinic.example");
    expect(within(tech).getByTestId("user-roles").textContent).toBe("Technician");
    expect(within(row(ADMIN_USER.email)).queryByTestId("disable")).toBeNull(); // never yourself

    fireEvent.click(within(tech).getByRole("button", { name: "Change roles" }));
    fireEvent.click(within(tech).getByLabelText("Technician"));
    fireEvent.click(within(tech).getByTestId("save-roles"));
    expect((await within(tech).findAllByTestId("field-error"))[0].textContent).toBe("Choose at least one role.");
    expect(auth.setUserRoles).not.toHaveBeenCalled();

    fireEvent.click(within(tech).getByLabelText("Clinician"));
    fireEvent.click(within(tech).getByLabelText("Viewer"));
    fireEvent.click(within(tech).getByTestId("save-roles"));
    await screen.findByText("Roles of Tech Nician are saved.");
    expect(auth.setUserRoles).toHaveBeenCalledWith({ name: "users/u-2", roles: [Role.CLINICIAN, Role.VIEWER] });
    await waitFor(() => expect(within(row("tech@demo-clinic.example")).getByTestId("user-roles").textContent).toBe("ClinicianViewer"));
    expect(auth.listUsers).toHaveBeenCalledTimes(2);
  });

  it("shows the server's refusal in the user's row, in Russian", async () => {
    const auth = fakeAuth([ADMIN_USER]);
    await renderAsAdmin(<UsersPage />, { auth } as unknown as Partial<Api>, "ru");
    const me = await screen.findByText("Demo Admin").then((el) => el.closest("tr")!);
    fireEvent.click(within(me).getByRole("button", { name: "Изменить роли" }));
    fireEvent.click(within(me).getByLabelText("Администратор"));
    fireEvent.click(within(me).getByLabelText("Врач"));
    fireEvent.click(within(me).getByRole("button", { name: "Сохранить роли" }));
    const alert = await within(me).findByRole("alert");
    expect(alert.textContent).toContain("В текущем состоянии это невозможно.");
    expect(alert.textContent).toContain("without an enabled admin");
  });

  it("lists the accounts waiting for approval and approves one", async () => {
    const auth = fakeAuth([
      ADMIN_USER,
      user("u-3", { email: "new@demo-clinic.example", displayName: "New Doctor", roles: [Role.CLINICIAN], approvalState: ApprovalState.PENDING }),
    ]);
    await renderAsAdmin(<UsersPage />, { auth } as unknown as Partial<Api>);
    await screen.findByText("New Doctor");
    fireEvent.change(screen.getByTestId("approval-filter"), { target: { value: String(ApprovalState.PENDING) } });
    await waitFor(() => expect(screen.getAllByTestId("user-row")).toHaveLength(1));
    expect(auth.listUsers).toHaveBeenLastCalledWith(expect.objectContaining({ approvalState: ApprovalState.PENDING }), expect.anything());
    fireEvent.click(within(row("new@demo-clinic.example")).getByTestId("approve"));
    await screen.findByText("New Doctor is approved.");
    await screen.findByText("No users in this list.");
  });
});

describe("delivery target", () => {
  it("puts SetDeliveryTarget's field violations next to their fields", async () => {
    const fetchImpl = vi.fn(async (url: RequestInfo | URL) => {
      if (String(url).endsWith("/GetDeliveryTarget")) return grpcWebError(5, "no delivery target");
      if (String(url).endsWith("/ListReports")) return grpcWebEmpty();
      return grpcWebBadRequest("invalid delivery target", [
        ["delivery_target.fhir_base_url", "is not an address reports may be sent to: 10.0.0.7 is private"],
        ["delivery_target.notify_emails[1]", "is not an e-mail address"],
      ]);
    });
    const api = createApi(noTokens, "http://edge.test", fetchImpl as typeof fetch);
    await renderAsAdmin(<DeliveryPage />, api, "ru");
    await screen.findByText("Адрес доставки не задан; отчёты никуда не отправляются.");
    fireEvent.change(screen.getByLabelText("Базовый URL FHIR"), { target: { value: "https://10.0.0.7/fhir" } });
    fireEvent.change(screen.getByLabelText("Уведомлять по e-mail"), { target: { value: "ward@demo-clinic.example\nnot-an-address" } });
    fireEvent.click(screen.getByRole("button", { name: "Сохранить" }));

    const errors = await screen.findAllByTestId("field-error");
    const byInput = Object.fromEntries(errors.map((e) => [e.closest(".field")!.querySelector("input, textarea")!.getAttribute("name"), e.textContent]));
    expect(byInput).toEqual({
      fhir_base_url: "is not an address reports may be sent to: 10.0.0.7 is private",
      "delivery_target.notify_emails": "not-an-address: is not an e-mail address",
    });
    const alert = screen.getByRole("alert");
    expect(alert.textContent).toBe("Проверьте отмеченные поля."); // nothing repeated below the form
    const sent = fetchImpl.mock.calls.find(([url]) => String(url).endsWith("/SetDeliveryTarget"));
    expect(sent).toBeTruthy();
  });
});

describe("models", () => {
  beforeEach(forgetRegistryRefusals);
  const model = create(ModelSchema, {
    name: "models/resnet50",
    kind: 1,
    stableVersion: 1n,
    versions: [
      { name: "models/resnet50/versions/1", version: 1n, state: ModelVersionState.STABLE, labels: ["a", "b"], preprocessingVersion: "img-v1" },
      { name: "models/resnet50/versions/2", version: 2n, state: ModelVersionState.REGISTERED, labels: ["a", "b"], preprocessingVersion: "img-v1" },
    ],
    trafficSplit: [{ version: 1n, weight: 100 }],
  });

  it("shows PERMISSION_DENIED as a sentence and then hides the change controls", async () => {
    const models = {
      listModels: vi.fn(async () => ({ models: [model], nextPageToken: "" })),
      getModel: vi.fn(async () => ({ model })),
      promoteModelVersion: vi.fn(async () => {
        throw new ConnectError("only the operator clinic's admins may change the registry", Code.PermissionDenied);
      }),
    };
    await renderAsAdmin(<ModelsPage />, { models } as unknown as Partial<Api>);
    const card = await screen.findByTestId("model");
    expect(within(card).getByTestId("stable-version").textContent).toBe("v1");
    fireEvent.click(within(card).getByTestId("promote"));
    const alert = await within(card).findByRole("alert");
    expect(alert.textContent).toContain("You are not allowed to do this.");
    expect(alert.textContent).toContain("operator clinic");
    await within(card).findByTestId("models-read-only");
    expect(within(card).queryByTestId("promote")).toBeNull();
    expect(within(card).queryByTestId("split-form")).toBeNull();
  });

  it.each([
    ["en", "12,345", "12,000 / 345"],
    ["ru", "12\u00a0345", "12\u00a0000 / 345"],
  ] as const)("shows each version's results in all and per arm (%s)", async (locale, total, byArm) => {
    const counted = create(ModelSchema, {
      ...model,
      versions: [
        { ...model.versions[0], resultCount: 12345n, stableResultCount: 12000n, canaryResultCount: 345n },
        model.versions[1],
      ],
    });
    const models = {
      listModels: vi.fn(async () => ({ models: [counted], nextPageToken: "" })),
      getModel: vi.fn(async () => ({ model: counted })),
    };
    await renderAsAdmin(<ModelsPage />, { models } as unknown as Partial<Api>, locale);
    const card = await screen.findByTestId("model");
    expect(within(card).getAllByTestId("result-count").map((c) => c.textContent)).toEqual([total, "0"]);
    expect(within(card).getAllByTestId("arm-counts").map((c) => c.textContent)).toEqual([byArm, "0 / 0"]);
    expect(card.textContent).not.toContain("not reported");
  });

  it("saves a canary split only when the weights add up to 100", async () => {
    const split = create(ModelSchema, { ...model, trafficSplit: [create(TrafficWeightSchema, { version: 1n, weight: 90 }), create(TrafficWeightSchema, { version: 2n, weight: 10 })] });
    const models = {
      listModels: vi.fn(async () => ({ models: [model], nextPageToken: "" })),
      getModel: vi.fn(async () => ({ model })),
      setTrafficSplit: vi.fn(async () => ({ model: split })),
    };
    await renderAsAdmin(<ModelsPage />, { models } as unknown as Partial<Api>);
    const card = await screen.findByTestId("model");
    const save = within(card).getByRole("button", { name: "Save split" }) as HTMLButtonElement;
    fireEvent.change(within(card).getByLabelText("v2 (%)"), { target: { value: "10" } });
    expect(within(card).getByTestId("split-sum").textContent).toContain("110");
    expect(save.disabled).toBe(true);
    fireEvent.change(within(card).getByLabelText("v1 (%)"), { target: { value: "90" } });
    expect(save.disabled).toBe(false);
    fireEvent.click(save);
    await within(card).findByText("The traffic split is saved.");
    expect(models.setTrafficSplit).toHaveBeenCalledWith({
      name: "models/resnet50",
      trafficSplit: [{ version: 1n, weight: 90 }, { version: 2n, weight: 10 }],
    });
    expect(within(card).getByText("v1 90% · v2 10%")).toBeTruthy();
  });
});

describe("dead letters", () => {
  const job = create(ReportJobSchema, { jobId: "job-1", clinicId: "demo-clinic", studyId: "s-1", reportId: "r-1" });

  it.each([
    ["medmesh.jobs.report", "medmesh.events.v1.ReportJob"],
    ["acme.jobs.report", "medmesh.events.v1.ReportJob"],
    ["medmesh.jobs.unknown", null],
  ])("decodes a payload on %s as %s", (subject, typeName) => {
    expect(decodePayload(subject, toBinary(ReportJobSchema, job))?.typeName ?? null).toBe(typeName);
  });

  it("inspects a dead letter's decoded payload and replays it", async () => {
    const letter = create(DeadLetterSchema, {
      name: "deadLetters/d-1",
      deadLetterId: "d-1",
      subject: "medmesh.jobs.report",
      payload: toBinary(ReportJobSchema, job),
      error: "report r-1 does not exist",
      attempts: 4,
      clinicId: "demo-clinic",
    });
    const infer = {
      listDeadLetters: vi.fn(async () => ({ deadLetters: [letter], nextPageToken: "" })),
      replayDeadLetter: vi.fn(async () => ({ deadLetter: create(DeadLetterSchema, { ...letter, replayTime: timestampFromDate(new Date()) }) })),
    };
    await renderAsAdmin(<DeadLettersPage />, { infer } as unknown as Partial<Api>);
    fireEvent.click(await screen.findByTestId("inspect"));
    const payload = JSON.parse(screen.getByTestId("payload").textContent!);
    expect(payload).toEqual({ jobId: "job-1", clinicId: "demo-clinic", studyId: "s-1", reportId: "r-1" });
    fireEvent.click(screen.getByTestId("replay"));
    await screen.findByText("The job is republished on medmesh.jobs.report.");
    expect(screen.getByTestId("replayed")).toBeTruthy();
    expect(screen.queryByTestId("replay")).toBeNull();
  });
});

describe("navigation", () => {
  it("shows the Admin entry to admins, marked current on every admin screen", async () => {
    window.history.replaceState(null, "", "/admin/models");
    await renderAsAdmin(<Layout>screen</Layout>, {});
    const admin = screen.getByRole("link", { name: "Admin" });
    expect(admin.getAttribute("href")).toBe("/admin/users");
    expect(admin.getAttribute("aria-current")).toBe("page");
    expect(screen.getByRole("link", { name: "Studies" }).getAttribute("aria-current")).toBeNull();
  });
});
