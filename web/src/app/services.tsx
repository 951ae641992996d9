// The app's long-lived objects (API clients, session), created once in main.tsx and handed
// down by context, so that tests can provide fakes.
import { createContext, useContext, useSyncExternalStore, type ReactNode } from "react";
import type { Api } from "../api/client";
import type { Session, SessionSnapshot } from "../auth/session";

export interface Services {
  api: Api;
  session: Session;
}

const ServicesContext = createContext<Services | null>(null);

export function ServicesProvider({ services, children }: { services: Services; children: ReactNode }) {
  return <ServicesContext.Provider value={services}>{children}</ServicesContext.Provider>;
}

export function useServices(): Services {
  const services = useContext(ServicesContext);
  if (!services) throw new Error("useServices outside <ServicesProvider>");
  return services;
}

export function useApi(): Api {
  return useServices().api;
}

export function useSession(): SessionSnapshot & { session: Session } {
  const { session } = useServices();
  const snapshot = useSyncExternalStore(session.subscribe, session.getSnapshot);
  return { ...snapshot, session };
}
