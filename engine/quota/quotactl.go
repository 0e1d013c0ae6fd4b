package quota

import (
	"errors"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kernel ABI not (yet) in golang.org/x/sys/unix: include/uapi/linux/fs.h,
// quota.h and dqblk_xfs.h.
const (
	fsIocFsGetXattr = 0x801c581f // _IOR('X', 31, struct fsxattr)
	fsIocFsSetXattr = 0x401c5820 // _IOW('X', 32, struct fsxattr)

	fsXflagProjInherit = 0x00000200

	prjQuota = 2 // PRJQUOTA, also XQM_PRJQUOTA

	qGetInfo   = 0x800005
	qGetQuota  = 0x800007
	qSetQuota  = 0x800008
	qxGetQuota = 0x5803 // XQM_CMD(3)
	qxSetQLim  = 0x5804 // XQM_CMD(4)

	qifBLimits  = 1 // QIF_BLIMITS
	qifSpace    = 2 // QIF_SPACE
	qifBlockSz  = 1024
	xfsBBSize   = 512 // XFS "basic blocks"
	fsDquotVer  = 1   // FS_DQUOT_VERSION
	fsProjQuota = 2   // FS_PROJ_QUOTA
	fsDqBSoft   = 1 << 2
	fsDqBHard   = 1 << 3

	xfsSuperMagic  = 0x58465342
	ext4SuperMagic = 0xEF53
)

// fsxattr is struct fsxattr (28 bytes).
type fsxattr struct {
	XFlags     uint32
	ExtSize    uint32
	NExtents   uint32
	ProjID     uint32
	CowExtSize uint32
	Pad        [8]byte
}

// ifDqblk is struct if_dqblk (72 bytes).
type ifDqblk struct {
	BHardLimit uint64 // in QIF_DQBLKSIZE (1 KiB) units
	BSoftLimit uint64
	CurSpace   uint64 // bytes
	IHardLimit uint64
	ISoftLimit uint64
	CurInodes  uint64
	BTime      uint64
	ITime      uint64
	Valid      uint32
	_          uint32
}

// ifDqinfo is struct if_dqinfo (24 bytes).
type ifDqinfo struct {
	BGrace uint64
	IGrace uint64
	Flags  uint32
	Valid  uint32
}

// fsDiskQuota is struct fs_disk_quota (112 bytes).
type fsDiskQuota struct {
	Version      int8
	Flags        int8
	FieldMask    uint16
	ID           uint32
	BlkHardLimit uint64 // in 512-byte basic blocks
	BlkSoftLimit uint64
	InoHardLimit uint64
	InoSoftLimit uint64
	BCount       uint64
	ICount       uint64
	ITimer       int32
	BTimer       int32
	IWarns       uint16
	BWarns       uint16
	ITimerHi     int8
	BTimerHi     int8
	RtbTimerHi   int8
	Padding2     int8
	RtbHardLimit uint64
	RtbSoftLimit uint64
	RtbCount     uint64
	RtbTimer     int32
	RtbWarns     uint16
	Padding3     int16
	Padding4     [8]byte
}

func qcmd(cmd, typ uint32) uint32 { return cmd<<8 | typ&0xff }

// quotactl runs one quota command for project id on the filesystem holding
// dirFd: quotactl_fd (Linux ≥ 5.14), else quotactl on the block device
// node dev (made by the caller) when quotactl_fd is missing.
func quotactl(dirFd int, dev string, cmd uint32, id uint32, addr unsafe.Pointer) error {
	_, _, e := unix.Syscall6(unix.SYS_QUOTACTL_FD, uintptr(dirFd), uintptr(qcmd(cmd, prjQuota)), uintptr(id), uintptr(addr), 0, 0)
	if e == 0 {
		return nil
	}
	if e != unix.ENOSYS || dev == "" {
		return e
	}
	p, err := unix.BytePtrFromString(dev)
	if err != nil {
		return err
	}
	_, _, e = unix.Syscall6(unix.SYS_QUOTACTL, uintptr(qcmd(cmd, prjQuota)), uintptr(unsafe.Pointer(p)), uintptr(id), uintptr(addr), 0, 0)
	if e != 0 {
		return e
	}
	return nil
}

// getProject reads dir's project ID and flags.
func getFsxattr(f *os.File) (fsxattr, error) {
	var x fsxattr
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsGetXattr, uintptr(unsafe.Pointer(&x)))
	if e != 0 {
		return x, fmt.Errorf("FS_IOC_FSGETXATTR %s: %w", f.Name(), e)
	}
	return x, nil
}

// setProject gives dir project id (0 clears it) with PROJINHERIT set (or
// cleared for 0), so files made under dir inherit the ID.
func setProject(dir string, id uint32) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	x, err := getFsxattr(f)
	if err != nil {
		return err
	}
	x.ProjID = id
	if id != 0 {
		x.XFlags |= fsXflagProjInherit
	} else {
		x.XFlags &^= fsXflagProjInherit
	}
	_, _, e := unix.Syscall(unix.SYS_IOCTL, f.Fd(), fsIocFsSetXattr, uintptr(unsafe.Pointer(&x)))
	if e != 0 {
		if e == unix.ENOTTY || e == unix.EOPNOTSUPP {
			return fmt.Errorf("FS_IOC_FSSETXATTR %s: project IDs unsupported (ext4 needs the project feature): %w", dir, e)
		}
		return fmt.Errorf("FS_IOC_FSSETXATTR %s: %w", dir, e)
	}
	return nil
}

// errQuotaOff is what quotactl says when project quota accounting is off.
var errQuotaOff = errors.New("project quota is not enabled on this filesystem")
