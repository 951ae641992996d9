// One image to svc_ingest: CreateUploadUrl (declaration checked by the server), a presigned
// PUT straight to the object store with XHR (whose upload events give a progress bar; fetch
// has none), then CompleteUpload (the server checks the bytes). The edge never carries them.
import type { Api } from "../api/client";
import type { StudyFile } from "@gen/medmesh/ingest/v1/study_pb";
import { CONTENT_TYPE } from "./limits";
import type { CheckedFile } from "./validation";

/** Files up to this size are hashed in the browser, so the server can verify what arrived. */
const HASH_LIMIT_BYTES = 128 * 1024 * 1024;

export class PutFailed extends Error {
  constructor(readonly status: number) {
    super(`the object store answered ${status}`);
  }
}

async function sha256Hex(file: Blob): Promise<string> {
  if (file.size > HASH_LIMIT_BYTES || !globalThis.crypto?.subtle) return "";
  const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** PUT `body` to a presigned URL, reporting progress in [0, 1]. */
export function putWithProgress(
  url: string,
  body: Blob,
  headers: Readonly<Record<string, string>>,
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<void> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
    };
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        onProgress(1);
        resolve();
      } else {
        reject(new PutFailed(xhr.status));
      }
    };
    xhr.onerror = () => reject(new PutFailed(0));
    xhr.onabort = () => reject(new DOMException("aborted", "AbortError"));
    signal?.addEventListener("abort", () => xhr.abort(), { once: true });
    xhr.send(body);
  });
}

export async function uploadImage(
  api: Api,
  study: string,
  checked: CheckedFile,
  onProgress: (fraction: number) => void,
  signal?: AbortSignal,
): Promise<StudyFile | undefined> {
  const { file, kind } = checked;
  const contentType = CONTENT_TYPE[kind] ?? "application/octet-stream";
  const upload = await api.ingest.createUploadUrl(
    {
      parent: study,
      kind,
      fileName: file.name,
      contentType,
      sizeBytes: BigInt(file.size),
      sha256: await sha256Hex(file),
    },
    { signal },
  );
  const body = file.type === contentType ? file : new Blob([file], { type: contentType });
  await putWithProgress(upload.url, body, upload.requiredHeaders, onProgress, signal);
  const done = await api.ingest.completeUpload({ name: upload.file?.name ?? "" }, { signal });
  return done.file;
}
