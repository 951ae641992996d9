// New study: patient reference and description, several images dropped or chosen (checked in
// the browser like svc_ingest checks them), a clinical note; then one study is created and
// every file goes up with its own progress bar.
import { useRef, useState, type DragEvent, type FormEvent } from "react";
import { StudyStatus } from "@gen/medmesh/common/v1/common_pb";
import { toDisplayError, type DisplayError } from "../api/errors";
import { useAction } from "../api/hooks";
import { Link } from "../app/router";
import { useApi } from "../app/services";
import { ErrorNotice } from "../components/ErrorNotice";
import { TextAreaField, TextField } from "../components/Field";
import { LiveIndicator } from "../components/LiveIndicator";
import { Page, ProgressBar, StudyStatusBadge } from "../components/misc";
import { useStudyWatch } from "../study/useWatch";
import { useI18n, type Formatters, type MessageKey, type Translate } from "../i18n";
import { PutFailed, uploadImage } from "../upload/transfer";
import { checkImageFile, checkNote, type CheckedFile, type Problem } from "../upload/validation";

type RowState = "waiting" | "uploading" | "done" | "failed";

interface Row {
  id: number;
  checked: CheckedFile;
  state: RowState;
  progress: number;
  error: DisplayError | null;
}

export function describeProblem(problem: Problem, name: string, t: Translate, fmt: Formatters): string {
  switch (problem.kind) {
    case "badType":
      return t("new.badType", { name });
    case "empty":
      return t("new.empty", { name });
    case "badName":
      return t("new.badName", { name });
    case "tooLarge":
      return t("new.tooLarge", { name, limit: fmt.bytes(problem.limit) });
  }
}

let nextRowId = 1;

/** The new study's status, live from the moment it exists (uploads, analysis, report). */
function CreatedStudyStatus({ name }: { name: string }) {
  const { t } = useI18n();
  const watch = useStudyWatch(name);
  if (!watch.last) return null;
  return (
    <div className="created-status" data-testid="new-study-status" data-status={StudyStatus[watch.last.status]}>
      <span className="muted">{t("detail.status")}:</span> <StudyStatusBadge status={watch.last.status} /> <LiveIndicator state={watch.state} />
    </div>
  );
}

export function NewStudyPage() {
  const { t, fmt } = useI18n();
  const api = useApi();
  const [patientRef, setPatientRef] = useState("");
  const [description, setDescription] = useState("");
  const [note, setNote] = useState("");
  const [rows, setRows] = useState<Row[]>([]);
  const [over, setOver] = useState(false);
  const [studyName, setStudyName] = useState("");
  const [noteError, setNoteError] = useState<DisplayError | null>(null);
  const [nothing, setNothing] = useState(false);
  const input = useRef<HTMLInputElement>(null);

  const add = async (files: FileList | File[]) => {
    const checked = await Promise.all(Array.from(files).map(checkImageFile));
    setRows((current) => [
      ...current,
      ...checked.map((c) => ({ id: nextRowId++, checked: c, state: "waiting" as RowState, progress: 0, error: null })),
    ]);
  };
  const update = (id: number, patch: Partial<Row>) =>
    setRows((current) => current.map((r) => (r.id === id ? { ...r, ...patch } : r)));

  const noteProblem = checkNote(note);
  const blocked = rows.some((r) => r.checked.problems.length > 0) || noteProblem !== null;

  const create = useAction(async () => {
    const { study } = await api.ingest.createStudy({ patientRef, description });
    return study;
  });

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const hasNote = note.trim().length > 0;
    setNothing(rows.length === 0 && !hasNote);
    if ((rows.length === 0 && !hasNote) || blocked || studyName) return;
    const study = await create.run();
    if (!study) return;
    setStudyName(study.name);
    await Promise.all(
      rows.map(async (row) => {
        update(row.id, { state: "uploading", progress: 0, error: null });
        try {
          await uploadImage(api, study.name, row.checked, (progress) => update(row.id, { progress }));
          update(row.id, { state: "done", progress: 1 });
        } catch (error) {
          const shown =
            error instanceof PutFailed
              ? { code: 14, message: error.message, fields: {} }
              : toDisplayError(error);
          update(row.id, { state: "failed", error: shown });
        }
      }),
    );
    if (hasNote) {
      try {
        await api.ingest.createTextNote({ parent: study.name, text: note, fileName: "note.txt" });
      } catch (error) {
        setNoteError(toDisplayError(error));
      }
    }
  };

  const onDrop = (event: DragEvent) => {
    event.preventDefault();
    setOver(false);
    if (event.dataTransfer.files.length) void add(event.dataTransfer.files);
  };
  const studyId = studyName.split("/")[1] ?? "";
  const finished = studyName !== "" && rows.every((r) => r.state === "done" || r.state === "failed");

  return (
    <Page title={t("new.title")}>
      <form className="card" onSubmit={submit} noValidate>
        <div className="grid grid-2">
          <TextField label={t("new.patientRef")} field="patient_ref" value={patientRef} onChange={(e) => setPatientRef(e.target.value)} error={create.error} hint={t("new.patientRefHint")} autoComplete="off" disabled={studyName !== ""} />
          <TextField label={t("new.description")} field="description" value={description} onChange={(e) => setDescription(e.target.value)} error={create.error} autoComplete="off" disabled={studyName !== ""} />
        </div>
        <div
          className={`dropzone${over ? " over" : ""}`}
          onDragOver={(e) => {
            e.preventDefault();
            setOver(true);
          }}
          onDragLeave={() => setOver(false)}
          onDrop={onDrop}
          data-testid="dropzone"
        >
          {t("new.drop")}{" "}
          <button type="button" className="link-button" onClick={() => input.current?.click()} disabled={studyName !== ""}>
            {t("new.browse")}
          </button>
          <input
            ref={input}
            type="file"
            multiple
            hidden
            accept=".png,.jpg,.jpeg,.dcm,image/png,image/jpeg,application/dicom"
            data-testid="file-input"
            onChange={(e) => {
              if (e.target.files) void add(e.target.files);
              e.target.value = "";
            }}
          />
        </div>
        {rows.length > 0 ? (
          <ul className="files" aria-label={t("studies.files")}>
            {rows.map((row) => (
              <li key={row.id} className="file-row" data-testid="upload-row" data-state={row.state}>
                <span className="file-name" title={row.checked.file.name}>
                  {row.checked.file.name}
                  <div className="muted">
                    {t(`file.kind.${row.checked.kind}` as MessageKey)} · {fmt.bytes(row.checked.file.size)}
                  </div>
                  {row.checked.problems.map((p) => (
                    <div key={p.kind} className="field-errors" data-testid="file-problem">
                      {describeProblem(p, row.checked.file.name, t, fmt)}
                    </div>
                  ))}
                  {row.error ? <ErrorNotice error={row.error} /> : null}
                </span>
                <span className="muted">{t(`new.${row.state}` as MessageKey)}</span>
                <ProgressBar value={row.progress} label={row.checked.file.name} />
                <button type="button" className="button button-quiet button-small" disabled={studyName !== ""} onClick={() => setRows((c) => c.filter((r) => r.id !== row.id))}>
                  {t("new.remove")}
                </button>
              </li>
            ))}
          </ul>
        ) : null}
        <TextAreaField
          label={t("new.note")}
          field="text"
          value={note}
          onChange={(e) => setNote(e.target.value)}
          placeholder={t("new.notePlaceholder")}
          error={noteError}
          problems={noteProblem ? [t("new.noteTooLong", { limit: fmt.bytes(noteProblem.kind === "tooLarge" ? noteProblem.limit : 0) })] : []}
          disabled={studyName !== ""}
        />
        {nothing ? <div className="notice notice-error">{t("new.nothing")}</div> : null}
        <ErrorNotice error={create.error} retrying={create.retrying} claimed={["patient_ref", "description"]} />
        <ErrorNotice error={noteError} claimed={["text"]} />
        <div className="page-actions">
          {studyName ? <CreatedStudyStatus name={studyName} /> : null}
          {finished ? (
            <Link className="button button-primary" to={`/studies/${studyId}`} data-testid="open-study">
              {t("new.openStudy")}
            </Link>
          ) : (
            <button type="submit" className="button button-primary" disabled={blocked || create.pending || studyName !== ""}>
              {t("new.submit")}
            </button>
          )}
        </div>
      </form>
    </Page>
  );
}
