package main

import (
	"encoding/json"
	"os"

	"github.com/pouchfly/pouchfly/piece"
)

func pieceSizeOf(size int64) int32 { return piece.SizeFor(size) }

func writeJSON(path string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

func readOutputs(path string) ([]Output, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var outs []Output
	return outs, json.Unmarshal(b, &outs)
}
