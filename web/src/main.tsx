import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { createApi } from "./api/client";
import { App } from "./app/App";
import { ServicesProvider } from "./app/services";
import { Session } from "./auth/session";
import { I18nProvider } from "./i18n";
import "./styles.css";

const session = new Session();
const api = createApi(session);
session.attach(api);
void session.restore();

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <I18nProvider>
      <ServicesProvider services={{ api, session }}>
        <App />
      </ServicesProvider>
    </I18nProvider>
  </StrictMode>,
);
