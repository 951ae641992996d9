import { detectLocale, formatters, translator } from "./index";
import { en } from "./en";
import { ru } from "./ru";

describe("languages", () => {
  beforeEach(() => window.localStorage.clear());

  it.each([
    [["ru-RU", "en"], "ru"],
    [["ru"], "ru"],
    [["en-US", "ru"], "ru"],
    [["de-DE", "en-US"], "en"],
    [[], "en"],
  ])("a browser preferring %j opens in %s", (languages, locale) => {
    expect(detectLocale(languages)).toBe(locale);
  });

  it("remembers an explicit choice over the browser's languages", () => {
    window.localStorage.setItem("medmesh.locale", "en");
    expect(detectLocale(["ru-RU"])).toBe("en");
  });

  it("translates every key and fills placeholders", () => {
    expect(Object.keys(ru).sort()).toEqual(Object.keys(en).sort());
    expect(translator("ru")("report.version", { version: 2 })).toBe("Версия 2");
  });

  it("formats numbers, percentages, sizes and dates for the locale", () => {
    const date = new Date(Date.UTC(2026, 11, 4, 13, 5));
    expect(formatters("ru").number(12321.5, { maximumFractionDigits: 1 })).toBe("12\u00a0321,5");
    expect(formatters("en").number(12321.5, { maximumFractionDigits: 1 })).toBe("12,321.5");
    expect(formatters("ru").percent(0.879)).toBe("87,9\u00a0%");
    expect(formatters("en").bytes(28_500)).toBe("27.8 kB");
    expect(formatters("ru").dateTime(date)).toContain("дек. 2026");
    expect(formatters("en").dateTime(date)).toContain("Dec 4, 2026");
  });
});
