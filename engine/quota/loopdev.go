package quota

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// loopMajor is the block major of loop devices (Documentation/admin-guide/devices.txt).
const loopMajor = 7

// loopDevice is an attached loop device.
type loopDevice struct {
	Number  int
	Path    string // /dev/loopN
	Backing string // backing file as the kernel reports it (" (deleted)" stripped)
	Deleted bool   // the backing file was unlinked
}

// attachLoop binds image to a free loop device with LO_FLAGS_AUTOCLEAR and
// returns the device path and an open descriptor on it. The caller mounts
// the device and then closes the descriptor: from then on the mount holds
// the device, and the kernel detaches it when the last mount goes away (or
// at once, if the caller dies before mounting). No loop device can leak.
func attachLoop(ctx context.Context, image string) (string, *os.File, error) {
	backing, err := os.OpenFile(image, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, err
	}
	defer backing.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", nil, fmt.Errorf("open /dev/loop-control: %w", err)
	}
	defer ctl.Close()

	var lastErr error
	for attempt := 0; attempt < 64; attempt++ {
		if err := ctx.Err(); err != nil {
			return "", nil, err
		}
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return "", nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		f, err := openLoopDev(dev, n)
		if err != nil {
			return "", nil, err
		}
		err = configureLoop(f, backing, image)
		if err == nil {
			return dev, f, nil
		}
		f.Close()
		if errors.Is(err, unix.EBUSY) { // another process took it between GET_FREE and here
			lastErr = err
			time.Sleep(time.Duration(attempt+1) * time.Millisecond)
			continue
		}
		return "", nil, fmt.Errorf("attach %s to %s: %w", image, dev, err)
	}
	return "", nil, fmt.Errorf("attach %s: no free loop device after retries: %w", image, lastErr)
}

// openLoopDev opens /dev/loopN, creating the node when the host's /dev
// lacks it (a minimal /dev in a container).
func openLoopDev(dev string, n int) (*os.File, error) {
	f, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(loopMajor, uint32(n)))); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, fmt.Errorf("mknod %s: %w", dev, err)
		}
		f, err = os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", dev, err)
	}
	return f, nil
}

// configureLoop sets backing as f's backing file with autoclear: one
// LOOP_CONFIGURE (Linux ≥ 5.8), else LOOP_SET_FD + LOOP_SET_STATUS64.
func configureLoop(f, backing *os.File, name string) error {
	var info unix.LoopInfo64
	info.Flags = unix.LO_FLAGS_AUTOCLEAR
	copy(info.File_name[:len(info.File_name)-1], name)
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd()), Info: info}
	err := unix.IoctlLoopConfigure(int(f.Fd()), &cfg)
	if err == nil || !(errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOTTY)) {
		return err
	}
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_FD, int(backing.Fd())); err != nil {
		return err
	}
	if err := unix.IoctlLoopSetStatus64(int(f.Fd()), &info); err != nil {
		_ = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0)
		return err
	}
	return nil
}

// listLoops returns every attached loop device of the host with its
// backing file (from /sys/block/loopN/loop/backing_file).
func listLoops() ([]loopDevice, error) {
	ents, err := os.ReadDir("/sys/block")
	if err != nil {
		return nil, err
	}
	var out []loopDevice
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "loop") {
			continue
		}
		n, err := strconv.Atoi(strings.TrimPrefix(name, "loop"))
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/sys/block", name, "loop", "backing_file"))
		if err != nil {
			continue // not attached
		}
		d := loopDevice{Number: n, Path: "/dev/" + name, Backing: strings.TrimSuffix(string(b), "\n")}
		if s, ok := strings.CutSuffix(d.Backing, " (deleted)"); ok {
			d.Backing, d.Deleted = s, true
		}
		out = append(out, d)
	}
	return out, nil
}

// loopBacking returns the backing file of the block device maj:min if it
// is an attached loop device.
func loopBacking(maj, min uint32) (string, bool) {
	b, err := os.ReadFile(fmt.Sprintf("/sys/dev/block/%d:%d/loop/backing_file", maj, min))
	if err != nil {
		return "", false
	}
	s := strings.TrimSuffix(string(b), "\n")
	s = strings.TrimSuffix(s, " (deleted)")
	return s, true
}

// detachLoop clears an attached loop device that nothing holds (LOOP_CLR_FD).
// ENXIO (already detached) is success.
func detachLoop(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENXIO) {
			return nil
		}
		return err
	}
	defer f.Close()
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_CLR_FD, 0); err != nil && !errors.Is(err, unix.ENXIO) {
		return fmt.Errorf("LOOP_CLR_FD %s: %w", dev, err)
	}
	return nil
}

// waitLoopsGone waits until no loop device is backed by image (autoclear
// runs when the last mount goes), clearing leftovers itself after a grace
// period. It gives up with an error when ctx ends or a device stays busy.
func waitLoopsGone(ctx context.Context, image string) error {
	deadline := time.Now().Add(2 * time.Second)
	cleared := false
	for {
		loops, err := listLoops()
		if err != nil {
			return err
		}
		var left []loopDevice
		for _, l := range loops {
			if l.Backing == image {
				left = append(left, l)
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			if cleared {
				return fmt.Errorf("loop device %s of %s still attached: held by a mount in another mount namespace or an open descriptor", left[0].Path, image)
			}
			cleared = true
			var errs []error
			for _, l := range left {
				if err := detachLoop(l.Path); err != nil {
					errs = append(errs, err)
				}
			}
			if err := errors.Join(errs...); err != nil {
				return fmt.Errorf("loop device of %s still attached: %w", image, err)
			}
			deadline = time.Now().Add(time.Second) // re-check once after clearing
			continue
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
