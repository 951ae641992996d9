"""The gateway's role rules: which roles may call which RPC from outside the mesh.

Keyed by RPC (`package.Service/Method`), so one rule covers REST, gRPC and gRPC-Web (see
svc_auth.routes). `Service/*` is the default for that service's RPCs without their own line.
A request that reaches no RPC, or an RPC without any rule, is denied (403): closed by default.

The services enforce their own rules again (defense in depth); this table is the coarse,
early gate that keeps unauthenticated and wrong-role traffic off the mesh. Keep it in step
with each service's rule table (the proto comments say who may call what).
"""

from __future__ import annotations

from collections.abc import Mapping

from medmesh.identity import (
    ADMIN,
    ADMINS,
    ANY_ROLE,
    CLINICIAN,
    PUBLIC,
    SERVICE,
    SIGNED_IN,
    WRITERS,
    OperatorOnly,
    RoleRule,
)

ADMIN_OR_CLINICIAN: frozenset[str] = frozenset({ADMIN, CLINICIAN})
ADMIN_OR_SERVICE: frozenset[str] = frozenset({ADMIN, SERVICE})

AUTH = "medmesh.auth.v1.AuthService"
INGEST = "medmesh.ingest.v1.IngestService"
INFERENCE = "medmesh.infer.v1.InferenceService"
MODELS = "medmesh.infer.v1.ModelRegistryService"
REPORTS = "medmesh.report.v1.ReportService"

GATEWAY_RULES: Mapping[str, RoleRule] = {
    # Signing in and out, and the public keys: reachable without a token.
    f"{AUTH}/Register": PUBLIC,
    f"{AUTH}/VerifyEmail": PUBLIC,
    f"{AUTH}/Login": PUBLIC,
    f"{AUTH}/RefreshToken": PUBLIC,
    f"{AUTH}/Logout": PUBLIC,
    f"{AUTH}/RequestPasswordReset": PUBLIC,
    f"{AUTH}/ResetPassword": PUBLIC,
    f"{AUTH}/GetJwks": PUBLIC,
    f"{AUTH}/AcceptInvitation": PUBLIC,
    # The caller's own account, also while awaiting approval (a token without roles).
    f"{AUTH}/GetMe": SIGNED_IN,
    f"{AUTH}/ChangePassword": SIGNED_IN,
    f"{AUTH}/ListUsers": ADMINS,
    f"{AUTH}/InviteUser": ADMINS,
    f"{AUTH}/ApproveUser": ADMINS,
    f"{AUTH}/SetUserRoles": ADMINS,
    f"{AUTH}/DisableUser": ADMINS,
    f"{AUTH}/RotateSigningKey": ADMINS,
    # Studies: everybody reads, viewers change nothing, deleting is for admins and clinicians.
    f"{INGEST}/*": ANY_ROLE,
    f"{INGEST}/CreateStudy": WRITERS,
    f"{INGEST}/DeleteStudy": ADMIN_OR_CLINICIAN,
    f"{INGEST}/UploadFile": WRITERS,
    f"{INGEST}/CreateTextNote": WRITERS,
    f"{INGEST}/CreateUploadUrl": WRITERS,
    f"{INGEST}/CompleteUpload": WRITERS,
    # Results: everybody reads; dead letters are an admin's business.
    f"{INFERENCE}/*": ANY_ROLE,
    f"{INFERENCE}/ListDeadLetters": ADMINS,
    f"{INFERENCE}/ReplayDeadLetter": ADMINS,
    # Model registry: everybody reads; the operator clinic's admins and machine clients
    # change it (it serves every clinic).
    f"{MODELS}/*": OperatorOnly(ADMIN_OR_SERVICE),
    f"{MODELS}/ListModels": ANY_ROLE,
    f"{MODELS}/GetModel": ANY_ROLE,
    # Reports: everybody reads; generating and delivering is for admins and clinicians.
    f"{REPORTS}/*": ANY_ROLE,
    f"{REPORTS}/GenerateReport": ADMIN_OR_CLINICIAN,
    f"{REPORTS}/DeliverReport": ADMIN_OR_CLINICIAN,
    f"{REPORTS}/RedeliverReport": ADMIN_OR_CLINICIAN,
    f"{REPORTS}/SetDeliveryTarget": ADMINS,
    f"{REPORTS}/GetDeliveryTarget": ADMINS,
}

# Paths that are not RPCs but pass the gateway without a token (probes).
PUBLIC_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})


def rule_for(rpc: str, rules: Mapping[str, RoleRule] = GATEWAY_RULES) -> RoleRule | None:
    """The rule of `package.Service/Method`: its own line, else its service's `/*` line."""
    if rpc in rules:
        return rules[rpc]
    service = rpc.rsplit("/", 1)[0]
    return rules.get(f"{service}/*")
