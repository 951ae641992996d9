import { Page } from "../components/misc";
import type { Params } from "../app/router";

export function StudiesPage({ params }: { params: Params }) {
  return <Page title="Studies">{JSON.stringify(params)}</Page>;
}
