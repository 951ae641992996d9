// Russian and English, switchable; dates, numbers and sizes through Intl for the chosen locale.
// Default: Russian when the browser prefers Russian, else English. The choice (a language
// code, nothing about patients) is remembered in localStorage.
import type { Timestamp } from "@bufbuild/protobuf/wkt";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { createContext, useCallback, useContext, useMemo, useState, type ReactNode } from "react";
import { en, type MessageKey } from "./en";
import { ru } from "./ru";

export type Locale = "ru" | "en";
export const LOCALES: readonly Locale[] = ["ru", "en"];
const CATALOGS: Record<Locale, Record<MessageKey, string>> = { en, ru };
const LOCALE_KEY = "medmesh.locale";

export function detectLocale(languages: readonly string[] = navigator.languages ?? [navigator.language]): Locale {
  try {
    const saved = window.localStorage.getItem(LOCALE_KEY);
    if (saved === "ru" || saved === "en") return saved;
  } catch {
    // Storage disabled: fall back to the browser's languages.
  }
  return languages.some((l) => l.toLowerCase().startsWith("ru")) ? "ru" : "en";
}

export type Translate = (key: MessageKey, values?: Record<string, string | number>) => string;

export function translator(locale: Locale): Translate {
  return (key, values) => {
    const template = CATALOGS[locale][key] ?? en[key] ?? key;
    if (!values) return template;
    return template.replace(/\{(\w+)\}/g, (_, name: string) => String(values[name] ?? `{${name}}`));
  };
}

export interface Formatters {
  dateTime(value: Timestamp | Date | undefined): string;
  number(value: number, options?: Intl.NumberFormatOptions): string;
  percent(value: number): string;
  bytes(value: number | bigint): string;
}

export function formatters(locale: Locale): Formatters {
  const dateTime = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short" });
  const percent = new Intl.NumberFormat(locale, { style: "percent", maximumFractionDigits: 1 });
  return {
    dateTime: (value) => {
      if (!value) return "—";
      return dateTime.format(value instanceof Date ? value : timestampDate(value));
    },
    number: (value, options) => new Intl.NumberFormat(locale, options).format(value),
    percent: (value) => percent.format(value),
    bytes: (value) => {
      const n = Number(value);
      const units = ["byte", "kilobyte", "megabyte", "gigabyte"] as const;
      let unit = 0;
      let scaled = n;
      while (scaled >= 1024 && unit < units.length - 1) {
        scaled /= 1024;
        unit += 1;
      }
      return new Intl.NumberFormat(locale, {
        style: "unit",
        unit: units[unit],
        unitDisplay: "short",
        maximumFractionDigits: unit === 0 ? 0 : 1,
      }).format(scaled);
    },
  };
}

interface I18nState {
  locale: Locale;
  setLocale(locale: Locale): void;
  t: Translate;
  fmt: Formatters;
}

const I18nContext = createContext<I18nState | null>(null);

export function I18nProvider({ children, initial }: { children: ReactNode; initial?: Locale }) {
  const [locale, setLocaleState] = useState<Locale>(() => initial ?? detectLocale());
  const setLocale = useCallback((next: Locale) => {
    setLocaleState(next);
    try {
      window.localStorage.setItem(LOCALE_KEY, next);
    } catch {
      // Not remembered; still switched for this page.
    }
  }, []);
  const value = useMemo(
    () => ({ locale, setLocale, t: translator(locale), fmt: formatters(locale) }),
    [locale, setLocale],
  );
  document.documentElement.lang = locale;
  return <I18nContext.Provider value={value}>{children}</I18nContext.Provider>;
}

export function useI18n(): I18nState {
  const state = useContext(I18nContext);
  if (!state) throw new Error("useI18n outside <I18nProvider>");
  return state;
}

export type { MessageKey };
