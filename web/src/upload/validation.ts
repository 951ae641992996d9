// What a dropped file is, by its bytes (magic numbers, as svc_ingest sniffs them), and
// whether svc_ingest would accept its declaration (name, size).
import { FileKind } from "@gen/medmesh/common/v1/common_pb";
import { MAX_FILE_NAME, MAX_TEXT_BYTES, sizeLimit } from "./limits";

const PNG_MAGIC = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
const JPEG_MAGIC = [0xff, 0xd8, 0xff];
const DICOM_MAGIC = [0x44, 0x49, 0x43, 0x4d]; // "DICM" at offset 128
const SNIFF_BYTES = 132;

/** The image kind the first bytes of a file show, or UNSPECIFIED. */
export function sniffKind(head: Uint8Array): FileKind {
  const startsWith = (magic: number[], at = 0) => magic.every((b, i) => head[at + i] === b);
  if (startsWith(PNG_MAGIC)) return FileKind.IMAGE_PNG;
  if (startsWith(JPEG_MAGIC)) return FileKind.IMAGE_JPEG;
  if (head.length >= SNIFF_BYTES && startsWith(DICOM_MAGIC, 128)) return FileKind.IMAGE_DICOM;
  return FileKind.UNSPECIFIED;
}

export type Problem =
  | { kind: "badType" }
  | { kind: "empty" }
  | { kind: "badName" }
  | { kind: "tooLarge"; limit: number };

export interface CheckedFile {
  file: File;
  kind: FileKind;
  problems: Problem[];
}

async function readHead(file: Blob): Promise<Uint8Array> {
  const slice = file.slice(0, SNIFF_BYTES);
  if (typeof slice.arrayBuffer === "function") return new Uint8Array(await slice.arrayBuffer());
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(new Uint8Array(reader.result as ArrayBuffer));
    reader.onerror = () => reject(reader.error);
    reader.readAsArrayBuffer(slice);
  });
}

/** Check a dropped file the way svc_ingest will: its kind from its bytes, name and size. */
export async function checkImageFile(file: File): Promise<CheckedFile> {
  const problems: Problem[] = [];
  if (!file.name || file.name.length > MAX_FILE_NAME || /[/\\\0]/.test(file.name)) {
    problems.push({ kind: "badName" });
  }
  if (file.size === 0) {
    return { file, kind: FileKind.UNSPECIFIED, problems: [...problems, { kind: "empty" }] };
  }
  const kind = sniffKind(await readHead(file));
  if (kind === FileKind.UNSPECIFIED) {
    problems.push({ kind: "badType" });
  } else if (file.size > sizeLimit(kind)) {
    problems.push({ kind: "tooLarge", limit: sizeLimit(kind) });
  }
  return { file, kind, problems };
}

/** The note's UTF-8 size against svc_ingest's limit; null when acceptable. */
export function checkNote(text: string): Problem | null {
  const bytes = new TextEncoder().encode(text).length;
  return bytes > MAX_TEXT_BYTES ? { kind: "tooLarge", limit: MAX_TEXT_BYTES } : null;
}
