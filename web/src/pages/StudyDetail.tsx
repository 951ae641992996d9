import { Page } from "../components/misc";
import type { Params } from "../app/router";

export function StudyDetailPage({ params }: { params: Params }) {
  return <Page title="StudyDetail">{JSON.stringify(params)}</Page>;
}
