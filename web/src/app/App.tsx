// Picks the screen for the address: public screens for anyone, the rest after sign-in
// (restoring a session from the tab's refresh token first), unknown addresses get a message.
import { useEffect } from "react";
import { useI18n } from "../i18n";
import { ErrorBoundary, Loading, Page } from "../components/misc";
import { Layout } from "./Layout";
import { RouterProvider, useRouter } from "./router";
import { HOME, canOpen, findRoute } from "./routes";
import { useSession } from "./services";

function Screen() {
  const { pathname, navigate } = useRouter();
  const { status, user } = useSession();
  const { t } = useI18n();
  const found = pathname === "/" ? null : findRoute(pathname);
  const needsSignIn = pathname === "/" || (found !== null && found.route.access !== "public");
  useEffect(() => {
    if (status === "signedOut" && needsSignIn) navigate("/sign-in", { replace: true });
    else if (status === "signedIn" && (pathname === "/" || pathname === "/sign-in")) navigate(HOME, { replace: true });
  }, [status, needsSignIn, pathname, navigate]);
  if (!found) {
    if (pathname === "/") return <Loading />;
    return (
      <Page title="404">
        <p>{t("error.notFoundPage")}</p>
      </Page>
    );
  }
  if (found.route.access !== "public") {
    if (status !== "signedIn") return <Loading />;
    if (!canOpen(found.route, user?.roles)) {
      return (
        <Page title="403">
          <p>{t("error.code.7")}</p>
        </Page>
      );
    }
  }
  const { page: PageComponent } = found.route;
  // key: a new address is a fresh screen (no state carried from another study).
  return <PageComponent key={pathname} params={found.params} />;
}

export function App() {
  return (
    <ErrorBoundary>
      <RouterProvider>
        <Layout>
          <ErrorBoundary>
            <Screen />
          </ErrorBoundary>
        </Layout>
      </RouterProvider>
    </ErrorBoundary>
  );
}
