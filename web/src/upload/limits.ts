// svc_ingest's upload limits (svc_ingest/config.py defaults; checked equal by
// tests/unit/test_web_app_config.py) and its declaration checks (svc_ingest/validation.py):
// checked here first so that a clinician hears at once, before any byte is sent. The server
// checks again, and its answer (field violations) is shown the same way.
import { FileKind } from "@gen/medmesh/common/v1/common_pb";

const MIB = 1024 * 1024;
export const MAX_IMAGE_BYTES = 256 * MIB;
export const MAX_DICOM_BYTES = 1024 * MIB;
export const MAX_TEXT_BYTES = 256 * 1024;
export const MAX_FILE_NAME = 255;

/** The content type svc_ingest expects for each kind (CANONICAL_CONTENT_TYPE). */
export const CONTENT_TYPE: Partial<Record<FileKind, string>> = {
  [FileKind.IMAGE_PNG]: "image/png",
  [FileKind.IMAGE_JPEG]: "image/jpeg",
  [FileKind.IMAGE_DICOM]: "application/dicom",
};

export function sizeLimit(kind: FileKind): number {
  if (kind === FileKind.IMAGE_DICOM) return MAX_DICOM_BYTES;
  if (kind === FileKind.TEXT_NOTE) return MAX_TEXT_BYTES;
  return MAX_IMAGE_BYTES;
}
