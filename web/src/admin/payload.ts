// A dead letter's payload decoded for reading: the medmesh.events.v1 message its subject
// carries (by the subject's tail, so a deployment's own subject root works too), as the
// message's JSON. Anything else (an unknown subject, bytes that do not parse) stays undecoded.
import { fromBinary, toJson, type DescMessage } from "@bufbuild/protobuf";
import {
  DeliveryJobSchema,
  InferenceFailedSchema,
  InferenceJobSchema,
  ReportJobSchema,
  ReportReadySchema,
  ResultReadySchema,
  StudyResultsReadySchema,
  StudyStatusChangedSchema,
} from "@gen/medmesh/events/v1/events_pb";

// Subject tail → payload message; more specific tails first.
const BY_TAIL: readonly [string, DescMessage][] = [
  [".jobs.infer.image", InferenceJobSchema],
  [".jobs.infer.text", InferenceJobSchema],
  [".jobs.report", ReportJobSchema],
  [".jobs.deliver", DeliveryJobSchema],
  [".events.study.results_ready", StudyResultsReadySchema],
  [".events.result.ready", ResultReadySchema],
  [".events.result.failed", InferenceFailedSchema],
  [".events.report.ready", ReportReadySchema],
];

export interface DecodedPayload {
  /** The message's full name, e.g. `medmesh.events.v1.ReportJob`. */
  typeName: string;
  /** The message as proto3 JSON, indented. */
  json: string;
}

function schemaFor(subject: string): DescMessage | undefined {
  const known = BY_TAIL.find(([tail]) => subject.endsWith(tail));
  if (known) return known[1];
  // `<root>.events.study.<status>` carries StudyStatusChanged.
  return /\.events\.study\.[a-z_]+$/.test(subject) ? StudyStatusChangedSchema : undefined;
}

export function decodePayload(subject: string, payload: Uint8Array): DecodedPayload | null {
  const schema = schemaFor(subject);
  if (!schema) return null;
  try {
    const message = fromBinary(schema, payload);
    return { typeName: schema.typeName, json: JSON.stringify(toJson(schema, message), null, 2) };
  } catch {
    return null;
  }
}
