import { fireEvent, screen, waitFor } from "@testing-library/react";
import { FileKind } from "@gen/medmesh/common/v1/common_pb";
import { NewStudyPage } from "../pages/NewStudy";
import { renderWith } from "../test/render";
import { MAX_DICOM_BYTES, MAX_IMAGE_BYTES, MAX_TEXT_BYTES } from "./limits";
import { checkImageFile, checkNote, sniffKind } from "./validation";

const PNG = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13];
const JPEG = [0xff, 0xd8, 0xff, 0xe0, 0, 16];

function dicom(): Uint8Array {
  const bytes = new Uint8Array(200);
  bytes.set([0x44, 0x49, 0x43, 0x4d], 128);
  return bytes;
}

function file(bytes: ArrayLike<number>, name: string, size?: number): File {
  const made = new File([new Uint8Array(bytes)], name);
  if (size !== undefined) Object.defineProperty(made, "size", { value: size });
  return made;
}

describe("sniffKind", () => {
  it.each([
    ["PNG", PNG, FileKind.IMAGE_PNG],
    ["JPEG", JPEG, FileKind.IMAGE_JPEG],
    ["DICOM", Array.from(dicom()), FileKind.IMAGE_DICOM],
    ["text", Array.from(new TextEncoder().encode("hello, not an image at all")), FileKind.UNSPECIFIED],
    ["a PNG signature cut short", PNG.slice(0, 4), FileKind.UNSPECIFIED],
  ])("reads %s from the first bytes", (_name, bytes, kind) => {
    expect(sniffKind(new Uint8Array(bytes))).toBe(kind);
  });
});

describe("checkImageFile mirrors svc_ingest's declaration checks", () => {
  it.each([
    ["a PNG named .jpg is still a PNG", file(PNG, "scan.jpg"), FileKind.IMAGE_PNG, []],
    ["a JPEG", file(JPEG, "scan.jpeg"), FileKind.IMAGE_JPEG, []],
    ["a DICOM", file(dicom(), "ct.dcm"), FileKind.IMAGE_DICOM, []],
    ["a text file renamed .png", file([0x68, 0x69, 0x21], "fake.png"), FileKind.UNSPECIFIED, ["badType"]],
    ["an empty file", file([], "empty.png"), FileKind.UNSPECIFIED, ["empty"]],
    ["a PNG over the image limit", file(PNG, "huge.png", MAX_IMAGE_BYTES + 1), FileKind.IMAGE_PNG, ["tooLarge"]],
    ["a PNG at the image limit", file(PNG, "max.png", MAX_IMAGE_BYTES), FileKind.IMAGE_PNG, []],
    ["a DICOM over the image limit but within its own", file(dicom(), "big.dcm", MAX_IMAGE_BYTES + 1), FileKind.IMAGE_DICOM, []],
    ["a DICOM over its limit", file(dicom(), "huge.dcm", MAX_DICOM_BYTES + 1), FileKind.IMAGE_DICOM, ["tooLarge"]],
    ["a name of 256 characters", file(PNG, `${"a".repeat(252)}.png`), FileKind.IMAGE_PNG, ["badName"]],
    ["a name with a backslash", file(PNG, "a\\b.png"), FileKind.IMAGE_PNG, ["badName"]],
  ])("%s", async (_name, input, kind, problems) => {
    const checked = await checkImageFile(input);
    expect(checked.kind).toBe(kind);
    expect(checked.problems.map((p) => p.kind)).toEqual(problems);
  });

  it("limits a note by its UTF-8 bytes, not its characters", () => {
    expect(checkNote("a".repeat(MAX_TEXT_BYTES))).toBeNull();
    // Cyrillic letters take two bytes each in UTF-8.
    expect(checkNote("ж".repeat(MAX_TEXT_BYTES / 2 + 1))).toEqual({ kind: "tooLarge", limit: MAX_TEXT_BYTES });
  });
});

describe("the new-study screen", () => {
  it("names a refused file and creates nothing", async () => {
    const createStudy = vi.fn();
    renderWith(<NewStudyPage />, { ingest: { createStudy } as never });
    const input = screen.getByTestId("file-input") as HTMLInputElement;
    fireEvent.change(input, { target: { files: [file([0x68, 0x69], "notes.png"), file(PNG, "chest.png")] } });
    await waitFor(() => expect(screen.getAllByTestId("upload-row")).toHaveLength(2));
    expect(screen.getByTestId("file-problem").textContent).toBe("notes.png: not a PNG, JPEG or DICOM file.");
    const submit = screen.getByRole("button", { name: "Create study and upload" }) as HTMLButtonElement;
    expect(submit.disabled).toBe(true);
    fireEvent.submit(submit.closest("form")!);
    expect(createStudy).not.toHaveBeenCalled();
  });

  it("shows the size limit in the user's language", async () => {
    renderWith(<NewStudyPage />, {}, "ru");
    fireEvent.change(screen.getByTestId("file-input"), {
      target: { files: [file(PNG, "big.png", MAX_IMAGE_BYTES + 1)] },
    });
    await waitFor(() => expect(screen.getByTestId("file-problem").textContent).toMatch(/^big\.png: больше 256\sМБ\.$/));
  });
});
