import { Page } from "../components/misc";
import type { Params } from "../app/router";

export function ReportPage({ params }: { params: Params }) {
  return <Page title="Report">{JSON.stringify(params)}</Page>;
}
