import { Page } from "../components/misc";
import type { Params } from "../app/router";

export function NewStudyPage({ params }: { params: Params }) {
  return <Page title="NewStudy">{JSON.stringify(params)}</Page>;
}
