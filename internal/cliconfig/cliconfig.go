// Package cliconfig loads a binary's configuration the same way for every
// Pouchfly command: defaults from the packages' DefaultConfig, then a YAML
// file (--config), then POUCHFLY_* environment variables, then flags.
package cliconfig

import (
	"fmt"
	"os"
	"strings"

	"github.com/go-viper/mapstructure/v2"
	"github.com/spf13/pflag"
	"github.com/spf13/viper"
	"gopkg.in/yaml.v3"

	"github.com/pouchfly/pouchfly/internal/errdefs"
)

// Load fills cfg (already holding the defaults) from file (may be ""),
// the environment (POUCHFLY_SECTION_KEY) and the flags bound with Bind.
// Unknown keys in the file are errors, so typos do not pass silently.
func Load(cfg any, file string, flags map[string]*pflag.Flag) error {
	v := viper.New()
	v.SetEnvPrefix("POUCHFLY")
	v.SetEnvKeyReplacer(strings.NewReplacer(".", "_"))
	v.AutomaticEnv()
	def, err := flatten(cfg)
	if err != nil {
		return err
	}
	for k, val := range def {
		v.SetDefault(k, val)
	}
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return fmt.Errorf("config %s: %w", file, err)
		}
		v.SetConfigType("yaml")
		if err := v.ReadConfig(strings.NewReader(string(b))); err != nil {
			return fmt.Errorf("config %s: %v: %w", file, err, errdefs.ErrInvalid)
		}
	}
	for key, f := range flags {
		if f != nil && f.Changed {
			if err := v.BindPFlag(key, f); err != nil {
				return err
			}
		}
	}
	hook := mapstructure.ComposeDecodeHookFunc(
		mapstructure.TextUnmarshallerHookFunc(),
		mapstructure.StringToTimeDurationHookFunc(),
		mapstructure.StringToSliceHookFunc(","),
	)
	if err := v.Unmarshal(cfg, viper.DecodeHook(hook), func(c *mapstructure.DecoderConfig) {
		c.ErrorUnused = true
		c.TagName = "yaml"
	}); err != nil {
		return fmt.Errorf("config: %v: %w", err, errdefs.ErrInvalid)
	}
	return nil
}

// flatten turns cfg into dotted keys → YAML values.
func flatten(cfg any) (map[string]any, error) {
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		return nil, err
	}
	out := map[string]any{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			key := k
			if prefix != "" {
				key = prefix + "." + k
			}
			if sub, ok := v.(map[string]any); ok && len(sub) > 0 {
				walk(key, sub)
				continue
			}
			out[key] = v
		}
	}
	walk("", m)
	return out, nil
}

// Print writes cfg as YAML (for `config default`).
func Print(cfg any) (string, error) {
	b, err := yaml.Marshal(cfg)
	return string(b), err
}
