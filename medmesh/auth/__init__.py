"""Token verification for every service: JWKS sources, the verifier, the gRPC interceptor.

svc_auth issues tokens; every service verifies them itself (defense in depth, even behind
the gateway) with the public keys svc_auth publishes as a JWKS document.
"""

from medmesh.auth.interceptor import AuthInterceptor, bearer_token
from medmesh.auth.jwks import GrpcJwksSource, JwksSource, StaticJwks, jwk_to_dict
from medmesh.auth.revocation import RevocationCheck, revocation_prefix
from medmesh.auth.tokens import ALLOWED_ALGORITHMS, TokenVerifier

__all__ = [
    "ALLOWED_ALGORITHMS",
    "AuthInterceptor",
    "GrpcJwksSource",
    "JwksSource",
    "RevocationCheck",
    "StaticJwks",
    "TokenVerifier",
    "bearer_token",
    "jwk_to_dict",
    "revocation_prefix",
]
