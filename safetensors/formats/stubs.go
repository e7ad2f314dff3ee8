package formats

import "errors"

var errTODO = errors.New("not implemented yet")

func (f *File) parseTorchZip() error    { return errTODO }
func (f *File) parseTorchLegacy() error { return errTODO }
func (f *File) parseNPZ() error         { return errTODO }
func (f *File) parseNPY() error         { return errTODO }
func (f *File) parseGGUF() error        { return errTODO }
