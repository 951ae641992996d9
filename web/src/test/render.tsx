// Rendering helpers for component tests: the app's providers around a screen, with a fake
// API (only the methods a test scripts) and a session that is signed in or not.
import { render } from "@testing-library/react";
import type { ReactElement } from "react";
import type { Api } from "../api/client";
import { RouterProvider } from "../app/router";
import { ServicesProvider } from "../app/services";
import { Session } from "../auth/session";
import { I18nProvider, type Locale } from "../i18n";

export function renderWith(ui: ReactElement, api: Partial<Api> = {}, locale: Locale = "en") {
  const session = new Session(window.sessionStorage);
  session.attach(api as Api);
  return render(
    <I18nProvider initial={locale}>
      <ServicesProvider services={{ api: api as Api, session }}>
        <RouterProvider>{ui}</RouterProvider>
      </ServicesProvider>
    </I18nProvider>,
  );
}
