// A labelled input with the server's field violations (and client checks) right under it.
import { useId, type InputHTMLAttributes, type ReactNode, type TextareaHTMLAttributes } from "react";
import { violationsOf, type DisplayError } from "../api/errors";

interface FieldProps {
  label: string;
  /** The request field this input fills (`email`, `new_password`): its violations show here. */
  field: string;
  error?: DisplayError | null;
  hint?: ReactNode;
  problems?: readonly string[];
}

function Messages({ id, messages }: { id: string; messages: readonly string[] }) {
  if (messages.length === 0) return null;
  return (
    <ul className="field-errors" id={id} data-testid="field-error">
      {messages.map((m) => (
        <li key={m}>{m}</li>
      ))}
    </ul>
  );
}

export function TextField({
  label,
  field,
  error,
  hint,
  problems = [],
  ...input
}: FieldProps & InputHTMLAttributes<HTMLInputElement>) {
  const id = useId();
  const messages = [...problems, ...violationsOf(error, field)];
  return (
    <div className={`field${messages.length ? " field-invalid" : ""}`}>
      <label htmlFor={id}>{label}</label>
      <input id={id} name={field} aria-invalid={messages.length > 0} aria-describedby={`${id}-e`} {...input} />
      {hint ? <div className="field-hint">{hint}</div> : null}
      <Messages id={`${id}-e`} messages={messages} />
    </div>
  );
}

export function TextAreaField({
  label,
  field,
  error,
  hint,
  problems = [],
  ...input
}: FieldProps & TextareaHTMLAttributes<HTMLTextAreaElement>) {
  const id = useId();
  const messages = [...problems, ...violationsOf(error, field)];
  return (
    <div className={`field${messages.length ? " field-invalid" : ""}`}>
      <label htmlFor={id}>{label}</label>
      <textarea id={id} name={field} aria-invalid={messages.length > 0} aria-describedby={`${id}-e`} {...input} />
      {hint ? <div className="field-hint">{hint}</div> : null}
      <Messages id={`${id}-e`} messages={messages} />
    </div>
  );
}
